"""The demo order service, in Python: the stable primary, or a stand-in for the Go canary.

Both implementations (this module and ``examples/canary/main.go``) serve the same API and,
with no fault planted, byte-for-byte the same JSON apart from the noisy fields
``request_id`` and ``meta``:

- ``GET  /api/orders/{id}``      an order, generated deterministically from the id (or the
  one a POST created);
- ``POST /api/orders``           create an order, deduct stock (201; 200 on a replay of the
  same ``X-Trace-ID``); ``X-Gray-Shadow: 1`` writes to the shadow store instead;
- ``GET  /api/inventory/{sku}``  real stock; ``?shadow=1`` (or ``X-Gray-Shadow: 1``) the
  shadow stock;
- ``GET  /healthz``;
- ``GET  /debug/vars``           (stand-in only) expvar-shaped runtime figures.

Determinism: every pseudo-random choice comes from SplitMix64 seeded with a salted id, and
string keys are hashed with 64-bit FNV-1a; both are implemented identically in Go. Money is
kept in integer cents and rendered as ``cents / 100`` (an integral value as a JSON integer,
as Go's encoding/json prints it).

Faults (the stand-in only; env ``ORDERS_FAULTS=a,b=1`` and/or repeated ``--fault a``):
``rounding``, ``timestamp_format``, ``item_order``, ``stock_deduction[=0.2]``,
``latency[=20ms]``, ``goroutine_leak``, ``gc_pressure[=20ms]``, ``pprof_on_serving_port``;
with a database, the write faults (the answer stays the primary's): ``stock_write[=0.2]``
(the Go canary has it too), and, this module only, ``stock_write_missing[=0.2]``,
``stock_write_extra[=0.2]``, ``shadow_ignored``.

Writes (``--database URL``, env ``ORDERS_DATABASE_URL``; ``--db-schema``, env
``ORDERS_DB_SCHEMA``, default ``orders_demo``): each order a POST creates is written, in one
transaction, as one row of ``orders`` and one row of ``stock_moves`` per line (``qty`` the
stock change, negative), both carrying the request's ``X-Trace-ID`` in ``trace_id``; a
request with ``X-Gray-Shadow: 1`` writes ``shadow_orders`` and ``shadow_stock_moves``
instead. The service creates its schema and the four tables when they are missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import re
import signal
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

__all__ = [
    "FAULT_NAMES",
    "FaultError",
    "Faults",
    "SplitMix64",
    "fnv1a64",
    "main",
    "make_app",
    "parse_faults",
]

log = logging.getLogger(__name__)

VERSION = "1.9.4"

MASK64 = (1 << 64) - 1

NUM_SKUS = 50
INITIAL_STOCK = 1_000_000
INVENTORY_TIME = 1_735_689_600  # 2025-01-01T00:00:00Z: when the inventory was seeded
GENERATED_EPOCH = 1_735_689_600  # generated orders: created within 2025
NEW_ORDER_EPOCH = 1_767_225_600  # orders made by POST: created within 180 days of 2026-01-01
CREATED_ID_BASE = 1_000_000_000_000  # POST with X-Trace-ID: base + fnv1a64(trace) % base
COUNTER_ID_BASE = 2_000_000_000_000  # POST without X-Trace-ID: base + counter
MAX_ORDER_ID = 9_999_999_999_999
TAX_BASIS_POINTS = 825
MAX_BODY_BYTES = 1 << 20
MAX_ITEMS = 50
MAX_QTY = 1000

SALT_ORDER = 0x6F726465725F6964
SALT_SKU = 0x736B755F63617461
SALT_CUSTOMER = 0x637573746F6D6572
SALT_CREATED = 0x637265617465645F
SALT_FAULT = 0x6661756C745F7374
SALT_WRITE = 0x77726974655F7174  # the write faults' draw

DB_SCHEMA_RE = re.compile(r"[a-z_][a-z0-9_]{0,62}")
DB_TABLES = ("orders", "stock_moves", "shadow_orders", "shadow_stock_moves")
DB_LOCK_KEY = 0x6F7264657273  # advisory lock: one service creates the tables at a time

FIRST_NAMES = (
    "Ada", "Alan", "Barbara", "Claude", "Donald", "Edsger", "Frances", "Grace",
    "Hedy", "John", "Katherine", "Ken", "Leslie", "Margaret", "Niklaus", "Radia",
)  # fmt: skip
LAST_NAMES = (
    "Allen", "Babbage", "Cerf", "Dijkstra", "Hamilton", "Hopper", "Johnson", "Kay",
    "Knuth", "Lamport", "Liskov", "Lovelace", "Perlman", "Ritchie", "Thompson", "Wirth",
)  # fmt: skip
TIERS = ("bronze", "silver", "gold", "platinum")
STATUSES = ("pending", "paid", "shipped", "delivered", "cancelled")
DEDUCTED_STATUSES = frozenset({"paid", "shipped", "delivered"})
CURRENCIES = ("USD", "EUR", "GBP")
ADJECTIVES = (
    "Red", "Blue", "Green", "Steel", "Oak", "Compact", "Deluxe", "Classic", "Smart", "Tiny",
)  # fmt: skip
NOUNS = (
    "Widget", "Gadget", "Lamp", "Chair", "Kettle", "Backpack", "Notebook", "Speaker", "Mug",
    "Cable",
)  # fmt: skip

CUSTOMER_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
ORDER_ID_RE = re.compile(r"[0-9]{1,13}")
FRACTION_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s)")
DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}

ERR_CUSTOMER = "customer_id must be a string of 1-64 characters [A-Za-z0-9_.:-]"
ERR_ITEMS = f"items must be a non-empty array of at most {MAX_ITEMS} items"

# The first 61 of Go's size classes, for the shape of memstats.BySize.
GO_SIZE_CLASSES = (
    0, 8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256,
    288, 320, 352, 384, 416, 448, 480, 512, 576, 640, 704, 768, 896, 1024, 1152, 1280,
    1408, 1536, 1792, 2048, 2304, 2688, 3072, 3200, 3456, 4096, 4864, 5376, 6144, 6528,
    6784, 6912, 8192, 9472, 9728, 10240, 10880, 12288, 13568, 14336, 16384, 18432,
)  # fmt: skip
GC_RING = 256
GC_PRESSURE_EVERY_S = 0.1  # gc_pressure: one forced full collection this often
GC_PRESSURE_MAX_S = 1.0  # bound on the fault's value
GC_PRESSURE_STEP = 20_000  # objects added to the kept graph per calibration step
GC_PRESSURE_MAX_OBJECTS = 1_000_000  # bound on the kept graph
GC_GARBAGE_BYTES = 4 << 20  # short-lived garbage allocated per cycle


# --------------------------------------------------------------------------- determinism


class SplitMix64:
    """SplitMix64 (Steele, Lea, Flood 2014): the same sequence as the Go canary's."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & MASK64

    def next(self) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & MASK64
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def intn(self, n: int) -> int:
        """A number in [0, n) (plain modulo: tiny bias, identical on both sides)."""
        return self.next() % n


def fnv1a64(data: bytes) -> int:
    """64-bit FNV-1a."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


@dataclass(frozen=True, slots=True)
class Sku:
    sku: str
    name: str
    price_cents: int


def _build_catalog() -> tuple[Sku, ...]:
    out = []
    for i in range(1, NUM_SKUS + 1):
        r = SplitMix64(SALT_SKU ^ i)
        name = f"{ADJECTIVES[r.intn(len(ADJECTIVES))]} {NOUNS[r.intn(len(NOUNS))]}"
        out.append(Sku(f"SKU-{i:04d}", name, 199 + r.intn(19802)))
    return tuple(out)


CATALOG: tuple[Sku, ...] = _build_catalog()
CATALOG_BY_SKU: dict[str, Sku] = {s.sku: s for s in CATALOG}  # read-only after import


def _customer(customer_id: str) -> tuple[str, str]:
    r = SplitMix64(SALT_CUSTOMER ^ fnv1a64(customer_id.encode("utf-8", "surrogateescape")))
    name = f"{FIRST_NAMES[r.intn(len(FIRST_NAMES))]} {LAST_NAMES[r.intn(len(LAST_NAMES))]}"
    return name, TIERS[r.intn(len(TIERS))]


# --------------------------------------------------------------------------- faults


FAULT_NAMES = (
    "gc_pressure",
    "shadow_ignored",
    "goroutine_leak",
    "item_order",
    "latency",
    "pprof_on_serving_port",
    "rounding",
    "stock_deduction",
    "stock_write",
    "stock_write_extra",
    "stock_write_missing",
    "timestamp_format",
)
# The faults whose value is a fraction of orders (default 0.2).
_FRACTION_FAULTS = ("stock_deduction", "stock_write", "stock_write_extra", "stock_write_missing")


class FaultError(ValueError):
    """A fault switch that does not exist or has a bad value."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Planted bugs; all off by default. ``latency`` in seconds, ``stock_deduction`` a
    fraction of POSTs in [0, 1]."""

    rounding: bool = False
    timestamp_format: bool = False
    item_order: bool = False
    stock_deduction: float = 0.0
    latency: float = 0.0
    goroutine_leak: bool = False
    gc_pressure: float = 0.0  # seconds each forced collection should take at least
    pprof_on_serving_port: bool = False
    # Write faults (with a database): the answer is the primary's, the rows are not.
    stock_write: float = 0.0  # a stock move with the wrong qty (one more deducted)
    stock_write_missing: float = 0.0  # an order's last stock move not written
    stock_write_extra: float = 0.0  # an order's first stock move written twice
    shadow_ignored: bool = False  # shadow requests written to the real tables

    @property
    def stock_deduction_threshold(self) -> int:
        """Out of 10000: an order is faulty when its fault draw is below this."""
        return math.floor(self.stock_deduction * 10000 + 0.5)


def _parse_duration(name: str, value: str) -> float:
    m = DURATION_RE.fullmatch(value)
    if m is None:
        raise FaultError(
            f'fault "{name}": value "{value}" must be a duration like 20ms (units ns, us, ms, s)'
        )
    return float(m.group(1)) * DURATION_UNITS[m.group(2)]


def parse_faults(specs: Iterable[str]) -> Faults:
    """Fault switches from ``name`` / ``name=value`` items (each may be a comma list)."""
    values: dict[str, Any] = {}
    for spec in specs:
        for raw in spec.split(","):
            item = raw.strip()
            if not item:
                continue
            name, eq, value = item.partition("=")
            name, value = name.strip(), value.strip()
            if name not in FAULT_NAMES:
                raise FaultError(f'unknown fault "{name}" (known: {", ".join(FAULT_NAMES)})')
            if name in _FRACTION_FAULTS:
                if not eq:
                    values[name] = 0.2
                    continue
                if FRACTION_RE.fullmatch(value) is None or float(value) > 1:
                    raise FaultError(
                        f'fault "{name}": value "{value}" must be a number between 0 and 1'
                    )
                values[name] = float(value)
            elif name == "latency":
                values[name] = _parse_duration(name, value) if eq else 0.020
            elif name == "gc_pressure":
                hold = _parse_duration(name, value) if eq else 0.020
                if not 0 < hold <= GC_PRESSURE_MAX_S:
                    raise FaultError(
                        f'fault "{name}": value "{value}" must be a duration in '
                        f"(0, {GC_PRESSURE_MAX_S:g}s]"
                    )
                values[name] = hold
            else:
                if eq:
                    raise FaultError(f'fault "{name}" takes no value')
                values[name] = True
    return Faults(**values)


def _faults_from_env() -> list[str]:
    return [os.environ.get("ORDERS_FAULTS", "")]


# --------------------------------------------------------------------------- state


@dataclass(slots=True)
class LineItem:
    sku: str
    name: str
    qty: int
    price_cents: int
    stock_after: int | None = None


@dataclass(frozen=True, slots=True)
class Order:
    id: int
    customer_id: str
    status: str
    currency: str
    items: tuple[LineItem, ...]
    created: int
    updated: int
    stock_deducted: bool


@dataclass(slots=True)
class Store:
    """One order table and inventory (the real one, or the shadow one)."""

    stock: dict[str, int] = field(default_factory=lambda: {s.sku: INITIAL_STOCK for s in CATALOG})
    updated: dict[str, int] = field(
        default_factory=lambda: {s.sku: INVENTORY_TIME for s in CATALOG}
    )
    orders: dict[int, Order] = field(default_factory=dict)
    counter: int = 0


@dataclass(slots=True)
class GcStats:
    """Collector pauses in the shape of Go's runtime.MemStats (ring of 256)."""

    started_ns: int = field(default_factory=time.monotonic_ns)
    num_gc: int = 0
    pause_total_ns: int = 0
    pause_ns: list[int] = field(default_factory=lambda: [0] * GC_RING)
    pause_end: list[int] = field(default_factory=lambda: [0] * GC_RING)
    last_gc: int = 0
    gc_started: int = 0

    def callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.gc_started = time.perf_counter_ns()
            return
        pause = time.perf_counter_ns() - self.gc_started
        end = time.time_ns()
        slot = self.num_gc % GC_RING
        self.pause_ns[slot] = pause
        self.pause_end[slot] = end
        self.pause_total_ns += pause
        self.last_gc = end
        self.num_gc += 1


@dataclass(slots=True)
class State:
    impl: str
    faults: Faults
    real: Store = field(default_factory=Store)
    shadow: Store = field(default_factory=Store)
    background: set[asyncio.Task[None]] = field(default_factory=set)
    never: asyncio.Event = field(default_factory=asyncio.Event)
    gc: GcStats = field(default_factory=GcStats)
    database_url: str | None = None
    db_schema: str = "orders_demo"
    db: Any = None  # asyncpg pool, when database_url is set

    def store(self, shadow: bool) -> Store:
        return self.shadow if shadow else self.real


STATE = web.AppKey("orders_state", State)


def spawn(
    tasks: set[asyncio.Task[None]], coro: Coroutine[Any, Any, None], name: str
) -> asyncio.Task[None]:
    """Start a named task and keep a reference to it until it ends."""
    task = asyncio.create_task(coro, name=name)
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


# --------------------------------------------------------------------------- orders


def generate_order(order_id: int) -> Order:
    """The order that ``GET /api/orders/{id}`` shows for an id no POST created."""
    r = SplitMix64(SALT_ORDER ^ order_id)
    customer_id = f"CUST-{1 + r.intn(99999):05d}"
    status = STATUSES[r.intn(len(STATUSES))]
    currency = CURRENCIES[r.intn(len(CURRENCIES))]
    n = 1 + r.intn(5)
    picked: set[int] = set()
    items: list[LineItem] = []
    while len(items) < n:
        idx = r.intn(NUM_SKUS)
        if idx in picked:
            continue
        picked.add(idx)
        sku = CATALOG[idx]
        items.append(LineItem(sku.sku, sku.name, 1 + r.intn(5), sku.price_cents))
    created = GENERATED_EPOCH + r.intn(365 * 86400)
    updated = created + r.intn(7 * 86400)
    return Order(
        order_id, customer_id, status, currency, tuple(items), created, updated,
        status in DEDUCTED_STATUSES,
    )  # fmt: skip


def _num(v: float) -> float | int:
    """An integral value as an int, so that json prints ``12`` like Go does, not ``12.0``."""
    return int(v) if v.is_integer() else v


def _money(cents: int, faults: Faults) -> float | int:
    v = cents / 100
    if faults.rounding:
        v = struct.unpack("<f", struct.pack("<f", v))[0]
    return _num(v)


def _timestamp(ts: int, faults: Faults) -> str:
    dt = datetime.fromtimestamp(ts, tz=UTC)
    if faults.timestamp_format:
        return dt.isoformat(timespec="microseconds")
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def render_order(o: Order, st: State) -> dict[str, Any]:
    f = st.faults
    name, tier = _customer(o.customer_id)
    items: list[dict[str, Any]] = []
    for it in o.items:
        d: dict[str, Any] = {
            "sku": it.sku,
            "name": it.name,
            "qty": it.qty,
            "price": _money(it.price_cents, f),
        }
        if it.stock_after is not None:
            d["stock_after"] = it.stock_after
        items.append(d)
    if f.item_order:
        items.reverse()
    subtotal = sum(it.qty * it.price_cents for it in o.items)
    tax = (subtotal * TAX_BASIS_POINTS + 5000) // 10000
    total = (subtotal + tax) / 100
    if f.rounding:  # a drift of 0.001 .. 0.004, always inside a 0.01 tolerance
        total += (1 + o.id % 4) / 1000
    return {
        "id": o.id,
        "customer": {"id": o.customer_id, "name": name, "tier": tier},
        "status": o.status,
        "currency": o.currency,
        "items": items,
        "subtotal": _money(subtotal, f),
        "tax": _money(tax, f),
        "total": _num(total),
        "created_at": _timestamp(o.created, f),
        "updated_at": _timestamp(o.updated, f),
        "request_id": uuid.uuid4().hex,
        "meta": {"served_by": st.impl, "version": VERSION},
        "stock_deducted": o.stock_deducted,
    }


# --------------------------------------------------------------------------- HTTP


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(data: Any, status: int = 200) -> web.Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type="application/json", charset="utf-8")


def _is_shadow(request: web.Request) -> bool:
    return request.headers.get("X-Gray-Shadow", "").strip() == "1"


HTTP_MESSAGES = {404: "not found", 405: "method not allowed", 413: "request body too large"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON ``{"error": ...}``, the way the Go canary answers."""
    try:
        return await handler(request)
    except ApiError as e:
        return _json({"error": e.message}, e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = _json({"error": HTTP_MESSAGES.get(e.status, e.reason.lower())}, e.status)
        if "Allow" in e.headers:
            resp.headers["Allow"] = e.headers["Allow"]
        return resp
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _json({"error": "internal error"}, 500)


async def _block_forever(never: asyncio.Event) -> None:
    await never.wait()


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Per-request faults: latency and the leaked task (never for /debug/)."""
    st = request.app[STATE]
    if not request.path.startswith("/debug/"):
        if st.faults.goroutine_leak:
            spawn(st.background, _block_forever(st.never), f"leak-{len(st.background)}")
        if st.faults.latency > 0:
            await asyncio.sleep(st.faults.latency)
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def get_order(request: web.Request) -> web.Response:
    st = request.app[STATE]
    raw = request.match_info["id"]
    if ORDER_ID_RE.fullmatch(raw) is None or int(raw) < 1:
        raise ApiError(404, "order not found")
    order_id = int(raw)
    stored = st.store(_is_shadow(request)).orders.get(order_id)
    if stored is not None:
        return _json(render_order(stored, st))
    if order_id >= CREATED_ID_BASE:
        raise ApiError(404, "order not found")
    return _json(render_order(generate_order(order_id), st))


def _parse_constant(name: str) -> Any:
    raise ValueError(f"invalid constant {name}")


def _validate(body: bytes) -> tuple[str, list[tuple[str, int]]]:
    try:
        data = json.loads(body, parse_constant=_parse_constant)
    except ValueError:
        raise ApiError(400, "invalid JSON body") from None
    if not isinstance(data, dict):
        raise ApiError(400, "body must be a JSON object")
    customer_id = data.get("customer_id")
    if not isinstance(customer_id, str) or CUSTOMER_ID_RE.fullmatch(customer_id) is None:
        raise ApiError(400, ERR_CUSTOMER)
    items = data.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        raise ApiError(400, ERR_ITEMS)
    lines: list[tuple[str, int]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, f"items[{i}] must be an object")
        sku, qty = item.get("sku"), item.get("qty")
        if not isinstance(sku, str):
            raise ApiError(400, f"items[{i}].sku must be a string")
        if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
            raise ApiError(400, f"items[{i}].qty must be an integer between 1 and {MAX_QTY}")
        lines.append((sku, qty))
    for sku, _ in lines:
        if sku not in CATALOG_BY_SKU:
            raise ApiError(422, f"unknown sku: {sku}")
    return customer_id, lines


async def create_order(request: web.Request) -> web.Response:
    st = request.app[STATE]
    shadow = _is_shadow(request)
    body = await request.read()
    customer_id, lines = _validate(body)
    store = st.store(shadow)
    trace = request.headers.get("X-Trace-ID", "").strip()
    if trace:
        order_id = CREATED_ID_BASE + fnv1a64(trace.encode("utf-8", "surrogateescape")) % (
            CREATED_ID_BASE
        )
    else:
        store.counter += 1
        order_id = COUNTER_ID_BASE + store.counter
    existing = store.orders.get(order_id)
    if existing is not None:  # a replay of the same trace: answer it again, deduct nothing
        return _json(render_order(existing, st), 200)

    faulty = SplitMix64(SALT_FAULT ^ order_id).next() % 10000 < (
        st.faults.stock_deduction_threshold
    )
    remaining: dict[str, int] = {}
    items: list[LineItem] = []
    for sku, qty in lines:
        left = remaining.get(sku, store.stock[sku])
        if left < qty:
            raise ApiError(409, f"insufficient stock for {sku}")
        left -= qty - 1 if faulty else qty  # the planted bug: off by one
        remaining[sku] = left
        cat = CATALOG_BY_SKU[sku]
        items.append(LineItem(sku, cat.name, qty, cat.price_cents, left))
    created = NEW_ORDER_EPOCH + SplitMix64(SALT_CREATED ^ order_id).intn(180 * 86400)
    for sku, left in remaining.items():
        store.stock[sku] = left
        store.updated[sku] = max(store.updated[sku], created)
    order = Order(order_id, customer_id, "pending", "USD", tuple(items), created, created,
                  not faulty)  # fmt: skip
    if st.db is not None and trace:
        await write_order(st, order, trace, shadow=shadow)
    store.orders[order_id] = order
    return _json(render_order(order, st), 201)


# --------------------------------------------------------------------------- database


def _fraction_hit(order_id: int, fraction: float) -> bool:
    return SplitMix64(SALT_WRITE ^ order_id).next() % 10000 < math.floor(fraction * 10000 + 0.5)


def stock_moves(order: Order, faults: Faults) -> list[tuple[str, int, str]]:
    """The stock moves an order writes: (sku, qty, reason), qty negative (a deduction);
    the write faults change them (the answer does not change)."""
    moves = [(it.sku, -it.qty, "order") for it in order.items]
    if faults.stock_write and _fraction_hit(order.id, faults.stock_write):
        sku, qty, reason = moves[0]
        moves[0] = (sku, qty - 1, reason)
    if faults.stock_write_missing and _fraction_hit(order.id, faults.stock_write_missing):
        moves = moves[:-1]
    if faults.stock_write_extra and _fraction_hit(order.id, faults.stock_write_extra):
        moves.append(moves[0])
    return moves


async def write_order(st: State, order: Order, trace: str, *, shadow: bool) -> None:
    """The order's rows, in one transaction: ``orders`` and ``stock_moves`` (``shadow_``
    tables for a shadow request)."""
    prefix = "shadow_" if shadow and not st.faults.shadow_ignored else ""
    schema = st.db_schema
    total = sum(it.qty * it.price_cents for it in order.items)
    try:
        async with st.db.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO {schema}.{prefix}orders (trace_id, order_id, customer_id, "
                "total_cents, items) VALUES ($1, $2, $3, $4, $5)",
                trace, order.id, order.customer_id, total, len(order.items),
            )  # fmt: skip
            await conn.executemany(
                f"INSERT INTO {schema}.{prefix}stock_moves (trace_id, order_id, sku, qty, "
                "reason) VALUES ($1, $2, $3, $4, $5)",
                [(trace, order.id, sku, qty, reason) for sku, qty, reason in
                 stock_moves(order, st.faults)],
            )  # fmt: skip
    except (TimeoutError, OSError) as exc:
        raise ApiError(503, "database unavailable") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("asyncpg"):
            log.warning("writing order %s failed: %s", order.id, exc)
            raise ApiError(503, "database unavailable") from exc
        raise


def schema_ddl(schema: str) -> list[str]:
    """The statements that create the service's schema and tables when missing."""
    out = [f"CREATE SCHEMA IF NOT EXISTS {schema}"]
    for prefix in ("", "shadow_"):
        out += [
            f"CREATE TABLE IF NOT EXISTS {schema}.{prefix}orders (id bigserial PRIMARY KEY, "
            "trace_id text NOT NULL, order_id bigint NOT NULL, customer_id text NOT NULL, "
            "total_cents bigint NOT NULL, items integer NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now())",
            f"CREATE INDEX IF NOT EXISTS {prefix}orders_trace_id ON {schema}.{prefix}orders "
            "(trace_id)",
            f"CREATE TABLE IF NOT EXISTS {schema}.{prefix}stock_moves (id bigserial PRIMARY "
            "KEY, trace_id text NOT NULL, order_id bigint NOT NULL, sku text NOT NULL, "
            "qty integer NOT NULL, reason text NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now())",
            f"CREATE INDEX IF NOT EXISTS {prefix}stock_moves_trace_id ON "
            f"{schema}.{prefix}stock_moves (trace_id)",
        ]
    return out


async def _db_ctx(app: web.Application) -> AsyncIterator[None]:
    st = app[STATE]
    if st.database_url is None:
        yield
        return
    import asyncpg  # only with a database: the service runs without it

    dsn = st.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    st.db = await asyncpg.create_pool(dsn, min_size=1, max_size=8, timeout=10)
    try:
        async with st.db.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", DB_LOCK_KEY)
            for stmt in schema_ddl(st.db_schema):
                await conn.execute(stmt)
        yield
    finally:
        await st.db.close()
        st.db = None


async def get_inventory(request: web.Request) -> web.Response:
    st = request.app[STATE]
    sku = request.match_info["sku"]
    cat = CATALOG_BY_SKU.get(sku)
    if cat is None:
        raise ApiError(404, f"unknown sku: {sku}")
    store = st.store(_is_shadow(request) or request.query.get("shadow") == "1")
    return _json(
        {
            "sku": sku,
            "stock": store.stock[sku],
            "price": _money(cat.price_cents, st.faults),
            "updated_at": _timestamp(store.updated[sku], st.faults),
        }
    )


def _rss_bytes() -> tuple[int, int]:
    """(resident, virtual) bytes of this process."""
    try:
        with open("/proc/self/statm") as fh:
            size, resident = (int(x) for x in fh.read().split()[:2])
        page = os.sysconf("SC_PAGE_SIZE")
        return resident * page, size * page
    except (OSError, ValueError):
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return rss, rss


async def get_debug_vars(request: web.Request) -> web.Response:
    """expvar's shape: cmdline, memstats (Go field names) and goroutines (= asyncio tasks)."""
    g = request.app[STATE].gc
    heap, virtual = _rss_bytes()
    uptime = max(1, time.monotonic_ns() - g.started_ns)
    blocks = sys.getallocatedblocks()
    memstats: dict[str, Any] = {
        "Alloc": heap,
        "TotalAlloc": heap,
        "Sys": virtual,
        "Lookups": 0,
        "Mallocs": blocks,
        "Frees": 0,
        "HeapAlloc": heap,
        "HeapSys": virtual,
        "HeapIdle": max(0, virtual - heap),
        "HeapInuse": heap,
        "HeapReleased": 0,
        "HeapObjects": len(gc.get_objects()),
        "StackInuse": 0,
        "StackSys": 0,
        "MSpanInuse": 0,
        "MSpanSys": 0,
        "MCacheInuse": 0,
        "MCacheSys": 0,
        "BuckHashSys": 0,
        "GCSys": 0,
        "OtherSys": 0,
        "NextGC": heap * 2,
        "LastGC": g.last_gc,
        "PauseTotalNs": g.pause_total_ns,
        "PauseNs": list(g.pause_ns),
        "PauseEnd": list(g.pause_end),
        "NumGC": g.num_gc,
        "NumForcedGC": 0,
        "GCCPUFraction": g.pause_total_ns / uptime,
        "EnableGC": gc.isenabled(),
        "DebugGC": False,
        "BySize": [{"Size": s, "Mallocs": 0, "Frees": 0} for s in GO_SIZE_CLASSES],
    }
    return _json(
        {"cmdline": list(sys.argv), "goroutines": len(asyncio.all_tasks()), "memstats": memstats}
    )


PPROF_INDEX = """<html>
<head><title>/debug/pprof/</title></head>
<body>
/debug/pprof/<br>
<br>
Types of profiles available:
<table>
<thead><td>Count</td><td>Profile</td></thead>
<tr><td>0</td><td><a href='allocs?debug=1'>allocs</a></td></tr>
<tr><td>0</td><td><a href='goroutine?debug=1'>goroutine</a></td></tr>
<tr><td>0</td><td><a href='heap?debug=1'>heap</a></td></tr>
</table>
<a href="goroutine?debug=2">full goroutine stack dump</a>
</body>
</html>
"""


async def pprof_index(request: web.Request) -> web.Response:
    return web.Response(text=PPROF_INDEX, content_type="text/html")


def _full_collection_s() -> float:
    started = time.perf_counter()
    gc.collect()
    return time.perf_counter() - started


def _gc_pressure_graph(hold: float) -> list[list[int]]:
    """Objects kept alive so that one full collection takes at least ``hold`` seconds (or
    the graph reaches :data:`GC_PRESSURE_MAX_OBJECTS`)."""
    graph: list[list[int]] = []
    while len(graph) < GC_PRESSURE_MAX_OBJECTS:
        graph.extend([i] for i in range(GC_PRESSURE_STEP))
        if _full_collection_s() >= hold:
            break
    return graph


async def _gc_pressure(hold: float) -> None:
    """The gc_pressure fault: keep a graph whose full collection takes ``hold``, and every
    :data:`GC_PRESSURE_EVERY_S` allocate garbage and collect everything. Each collection
    holds the interpreter (and so every request) for its whole length; the pauses show in
    ``/debug/vars`` (``PauseNs``) like Go's stop-the-world pauses."""
    graph = _gc_pressure_graph(hold)
    log.info(
        "gc_pressure: %d objects kept, a collection every %gs", len(graph), GC_PRESSURE_EVERY_S
    )
    while True:
        await asyncio.sleep(GC_PRESSURE_EVERY_S)
        garbage = [bytearray(64 << 10) for _ in range(GC_GARBAGE_BYTES // (64 << 10))]
        del garbage
        gc.collect()


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    """Owns the stand-in's gc callback and every task the app spawned."""
    st = app[STATE]
    gc.callbacks.append(st.gc.callback)
    if st.faults.gc_pressure > 0:
        spawn(st.background, _gc_pressure(st.faults.gc_pressure), "gc-pressure")
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(st.gc.callback)
        tasks = list(st.background)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def make_app(
    impl: str = "python",
    faults: Faults = Faults(),
    *,
    debug_vars: bool = False,
    database_url: str | None = None,
    db_schema: str = "orders_demo",
) -> web.Application:
    """The order service. ``impl`` goes into ``meta.served_by``; ``debug_vars`` adds the
    stand-in's expvar-shaped ``/debug/vars``; ``database_url`` makes it write its orders
    and stock moves to PostgreSQL, in ``db_schema``."""
    if DB_SCHEMA_RE.fullmatch(db_schema) is None:
        raise ValueError(f'--db-schema: "{db_schema}" is not a lower-case SQL identifier')
    app = web.Application(middlewares=[fault_middleware, error_middleware],
                          client_max_size=MAX_BODY_BYTES)  # fmt: skip
    app[STATE] = State(impl=impl, faults=faults, database_url=database_url, db_schema=db_schema)
    app.cleanup_ctx.append(_runtime_ctx)
    app.cleanup_ctx.append(_db_ctx)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/api/orders", create_order)
    app.router.add_get("/api/orders/{id}", get_order)
    app.router.add_get("/api/inventory/{sku}", get_inventory)
    if debug_vars:
        app.router.add_get("/debug/vars", get_debug_vars)
    if faults.pprof_on_serving_port:
        app.router.add_get("/debug/pprof/{tail:.*}", pprof_index)
    return app


# --------------------------------------------------------------------------- CLI


def _split_listen(listen: str) -> tuple[str | None, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f'--listen: "{listen}" is not host:port')
    host = host.strip("[]")
    return (host or None), int(port)


async def _serve(app: web.Application, host: str | None, port: int) -> None:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        addr = runner.addresses[0]
        shown = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
        print(f"listening on http://{shown}:{addr[1]}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m graygate.examples.orders",
        description="Demo order service (graygate's primary, or a stand-in for the Go canary).",
    )
    parser.add_argument(
        "--listen",
        default=os.environ.get("LISTEN") or "127.0.0.1:8081",
        help="host:port (env LISTEN; port 0 picks one; default 127.0.0.1:8081)",
    )
    parser.add_argument("--role", choices=("primary", "canary-standin"), default="primary")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help=f"plant a fault (canary-standin only; repeatable; also env ORDERS_FAULTS): "
        f"{', '.join(FAULT_NAMES)}",
    )
    parser.add_argument(
        "--database",
        default=os.environ.get("ORDERS_DATABASE_URL") or None,
        metavar="URL",
        help="write orders and stock moves to this PostgreSQL (env ORDERS_DATABASE_URL)",
    )
    parser.add_argument(
        "--db-schema",
        default=os.environ.get("ORDERS_DB_SCHEMA") or "orders_demo",
        help="the schema of its tables (env ORDERS_DB_SCHEMA; default orders_demo)",
    )
    args = parser.parse_args(argv)
    standin = args.role == "canary-standin"
    try:
        faults = parse_faults((_faults_from_env() if standin else []) + args.fault)
        if not standin and args.fault:
            raise FaultError("faults apply only to --role canary-standin")
        host, port = _split_listen(args.listen)
        app = make_app(
            "python-standin" if standin else "python",
            faults,
            debug_vars=standin,
            database_url=args.database,
            db_schema=args.db_schema,
        )
    except ValueError as e:
        print(f"orders: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(app, host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
