"""Benchmark: graygate's compare() against plain DeepDiff and against merely parsing.

    python bench/bench_diff.py [--pairs N] [--seconds S] [--seed K]

Generates realistic order responses (1-3 KB of JSON: a nested customer, 1-8 items with
sku/name/qty/price, totals, ISO timestamps, a request id, meta) and two traffic mixes:

    a  90 % identical bytes, 8 % differing only in ignored fields (request_id, meta.*,
       timestamps), 2 % differing in real fields
    b  every pair differing in ignored fields, 1 % also in real fields

For each mix it measures pairs per second on one core for graygate's ``compare`` (on the
raw recorded bodies, as the diff worker calls it), for ``DeepDiff(a, b)`` on every parsed
pair (parsing included), and for merely parsing both bodies with orjson, then prints the
ratios engine/DeepDiff (target >= 50 on mix a) and engine/parse-only (target >= 0.5 on
mix b). Exit code 0 when both targets are met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from deepdiff import DeepDiff

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config.schema import CompareConfig
from diff.compare import compare
from diff.rules import RuleBook, RuleSet
from graygate.values import Answer

__all__ = ["main"]

Pair = tuple[bytes, bytes]

RULES = {
    "defaults": {
        "ignore": ["$..request_id", "$.meta.**", "$..created_at", "$..updated_at"],
    },
    "endpoints": [
        {
            "match": "GET /api/orders/{id}",
            "strict": ["$.status"],
            "tolerance": {"$.totals.total": {"abs": 0.01}, "$.items[*].price": {"rel": 0.001}},
            "arrays": {"$.items": {"key": "sku"}},
        }
    ],
}

_FIRST = ["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances"]
_LAST = ["Lovelace", "Hopper", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie"]
_CITIES = ["Berlin", "Lisbon", "Oslo", "Madrid", "Vienna", "Prague", "Dublin"]
_PRODUCTS = [
    "Mechanical keyboard",
    "USB-C hub, 7 ports",
    "27-inch monitor",
    "Noise-cancelling headphones",
    "Ergonomic mouse",
    "Laptop stand, aluminium",
    "Webcam 1080p",
    "Desk lamp with wireless charger",
]


def _iso(rng: random.Random) -> str:
    return (
        f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}."
        f"{rng.randint(0, 999999):06d}Z"
    )


def make_order(rng: random.Random) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    for _ in range(rng.randint(1, 8)):
        price = round(rng.uniform(3, 400), 2)
        qty = rng.randint(1, 4)
        items.append(
            {
                "sku": f"SKU-{rng.randint(10000, 99999)}",
                "name": rng.choice(_PRODUCTS),
                "qty": qty,
                "price": price,
                "line_total": round(price * qty, 2),
                "in_stock": rng.random() > 0.1,
                "attributes": {
                    "color": rng.choice(["black", "white", "grey"]),
                    "warranty_months": 24,
                },
                "image_url": f"https://cdn.example.com/img/{rng.getrandbits(48):012x}.jpg",
            }
        )
    subtotal = round(sum(i["line_total"] for i in items), 2)
    tax = round(subtotal * 0.19, 2)
    shipping = 0.0 if subtotal > 100 else 4.95
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    return {
        "order_id": rng.randint(100000, 999999),
        "status": rng.choice(["paid", "shipped", "pending", "delivered"]),
        "created_at": _iso(rng),
        "updated_at": _iso(rng),
        "request_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "customer": {
            "id": rng.randint(1, 10**6),
            "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}@example.com",
            "vip": rng.random() < 0.1,
            "address": {
                "line1": f"{rng.randint(1, 200)} Main Street",
                "city": rng.choice(_CITIES),
                "postcode": f"{rng.randint(10000, 99999)}",
                "country": rng.choice(["DE", "PT", "NO", "ES", "AT"]),
            },
        },
        "items": items,
        "totals": {
            "subtotal": subtotal,
            "tax": tax,
            "shipping": shipping,
            "total": round(subtotal + tax + shipping, 2),
            "currency": "EUR",
        },
        "payment": {
            "method": rng.choice(["card", "paypal", "sepa"]),
            "captured": True,
            "authorized_at": _iso(rng),
        },
        "shipping": {
            "carrier": rng.choice(["DHL", "UPS", "GLS"]),
            "service": "standard",
            "estimated_delivery": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "address": {
                "name": f"{first} {last}",
                "line1": f"{rng.randint(1, 200)} Harbour Road",
                "city": rng.choice(_CITIES),
                "postcode": f"{rng.randint(10000, 99999)}",
                "country": rng.choice(["DE", "PT", "NO", "ES", "AT"]),
            },
        },
        "notes": None,
        "stock_deducted": True,
        "meta": {
            "served_by": f"orders-{rng.randint(1, 9)}",
            "took_ms": rng.randint(2, 80),
            "version": "1.14.2",
            "cache": rng.choice(["hit", "miss"]),
        },
    }


def vary_ignored(rng: random.Random, order: dict[str, Any]) -> dict[str, Any]:
    other = copy.deepcopy(order)
    other["request_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
    other["updated_at"] = _iso(rng)
    other["meta"]["served_by"] = f"orders-go-{rng.randint(1, 9)}"
    other["meta"]["took_ms"] = rng.randint(1, 30)
    if rng.random() < 0.5:
        other["created_at"] = _iso(rng)
    return other


def vary_real(rng: random.Random, order: dict[str, Any]) -> dict[str, Any]:
    other = copy.deepcopy(order)
    what = rng.randrange(4)
    if what == 0:
        other["status"] = "cancelled"
    elif what == 1:
        other["totals"]["total"] = round(other["totals"]["total"] + 1.0, 2)
    elif what == 2:
        other["items"][0]["qty"] += 1
    else:
        other["items"].insert(0, {**other["items"][0], "sku": "SKU-00000"})
    return other


def make_mix(mix: str, n: int, seed: int) -> list[Pair]:
    rng = random.Random(seed)
    pairs: list[Pair] = []
    for _ in range(n):
        order = make_order(rng)
        roll = rng.random()
        if mix == "a":
            if roll < 0.90:
                other = order
            elif roll < 0.98:
                other = vary_ignored(rng, order)
            else:
                other = vary_real(rng, vary_ignored(rng, order))
        else:
            other = vary_ignored(rng, order)
            if roll < 0.01:
                other = vary_real(rng, other)
        # Both sides serialise independently, as two services would.
        pairs.append((orjson.dumps(order), orjson.dumps(other)))
    return pairs


def measure(fn: Callable[[bytes, bytes], object], pairs: list[Pair], seconds: float) -> float:
    """Pairs per second: whole passes over ``pairs`` until ``seconds`` have gone by."""
    done = 0
    start = time.process_time()
    deadline = start + seconds
    while True:
        for a, b in pairs:
            fn(a, b)
            done += 1
            if done % 64 == 0 and time.process_time() > deadline:
                return done / (time.process_time() - start)
        if time.process_time() > deadline:
            return done / (time.process_time() - start)


def engine_fn(rules: RuleSet) -> Callable[[bytes, bytes], object]:
    headers = {"content-type": "application/json"}

    def run(a: bytes, b: bytes) -> object:
        return compare(Answer(200, headers, a), Answer(200, headers, b), rules)

    return run


def deepdiff_fn(a: bytes, b: bytes) -> object:
    return DeepDiff(orjson.loads(a), orjson.loads(b))


def parse_fn(a: bytes, b: bytes) -> object:
    return orjson.loads(a), orjson.loads(b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000, help="pairs per mix (default 2000)")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="seconds per measurement (default 3)"
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    book = RuleBook.from_config(CompareConfig.model_validate(RULES))
    rules = book.for_endpoint(book.matcher.endpoint("GET", "/api/orders/123456"))
    engine = engine_fn(rules)

    results: dict[str, dict[str, float]] = {}
    for mix in ("a", "b"):
        pairs = make_mix(mix, args.pairs, args.seed)
        sizes = [len(a) for a, _ in pairs]
        identical = sum(a == b for a, b in pairs)
        real = sum(bool(engine(a, b)) for a, b in pairs)
        print(
            f"mix {mix}: {len(pairs)} pairs, {min(sizes)}-{max(sizes)} bytes "
            f"(mean {sum(sizes) // len(sizes)}), {identical} identical, "
            f"{real} with a difference that counts",
            flush=True,
        )
        results[mix] = {
            "graygate compare": measure(engine, pairs, args.seconds),
            "DeepDiff(a, b) + parse": measure(deepdiff_fn, pairs, args.seconds),
            "orjson parse only": measure(parse_fn, pairs, args.seconds),
        }

    names = list(results["a"])
    print()
    print(f"{'pairs/s (one core)':<26}{'mix a':>14}{'mix b':>14}")
    for name in names:
        print(f"{name:<26}{results['a'][name]:>14,.0f}{results['b'][name]:>14,.0f}")
    print()
    ok = True
    for mix, other, target in (
        ("a", "DeepDiff(a, b) + parse", 50.0),
        ("b", "orjson parse only", 0.5),
        ("a", "orjson parse only", None),
        ("b", "DeepDiff(a, b) + parse", None),
    ):
        ratio = results[mix]["graygate compare"] / results[mix][other]
        verdict = ""
        if target is not None:
            met = ratio >= target
            ok = ok and met
            verdict = f"  target >= {target:g}: {'met' if met else 'NOT met'}"
        print(f"mix {mix}: engine / {other:<24} = {ratio:8.2f}{verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
