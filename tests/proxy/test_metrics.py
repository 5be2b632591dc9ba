"""The request path's metrics: batched on the event loop's thread, exact when collected."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

from proxy import metrics
from proxy.metrics import (
    FLUSH_INTERVAL_S,
    MIRROR_IN_FLIGHT,
    UPSTREAM_REQUESTS,
    count_mirror_outcome,
    count_mirror_skip,
    observe_proxy_added,
    observe_upstream,
)

# One value per bucket of the latency histogram, its bounds themselves, and past the last.
LATENCIES = [
    0.0001, 0.0005, 0.0007, 0.001, 0.002, 0.0025, 0.004, 0.005, 0.009, 0.01, 0.02, 0.025,
    0.03, 0.05, 0.07, 0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0, 2.0, 2.5, 3.0, 5.0, 7.0, 10.0,
    20.0, 30.0, 31.0, 1e9,
]  # fmt: skip


ENDPOINT = "GET /api/orders/{id}"


def sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def applied_requests(role: str, mode: str, status: str) -> float:
    """The counter as prometheus_client holds it now (no flush: not through REGISTRY)."""
    for family in UPSTREAM_REQUESTS.collect():
        for s in family.samples:
            if s.name.endswith("_total") and s.labels == {
                "role": role,
                "mode": mode,
                "status": status,
            }:
                return s.value
    return 0.0


async def test_a_collection_sees_every_update_and_buckets_match_observe() -> None:
    """Batched observations land in the same buckets, count and sum as ``observe`` calls:
    the batching writes the histogram's bucket values itself, which a change of
    prometheus_client's internals would break here."""
    role = "test-buckets"
    reference = Histogram(
        "reference_latency_seconds",
        "the same observations, one observe() each",
        buckets=metrics._LATENCY_BUCKETS,
        registry=CollectorRegistry(),
    )
    for seconds in LATENCIES:
        observe_upstream(role, "serve", ENDPOINT, 200, seconds)
        reference.observe(seconds)
    observe_upstream(role, "serve", ENDPOINT, "timeout", None)  # an error: no latency

    want = {
        (s.name, s.labels.get("le")): s.value
        for family in reference.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }
    for (name, le), value in want.items():
        name = name.replace("reference_latency_seconds", "graygate_upstream_latency_seconds")
        labels = {"role": role, "mode": "serve", "endpoint": ENDPOINT}
        if le is not None:
            labels["le"] = le
        assert sample(name, labels) == value, (name, le)
    assert sample(
        "graygate_upstream_requests_total", {"role": role, "mode": "serve", "status": "200"}
    ) == len(LATENCIES)
    assert (
        sample(
            "graygate_upstream_requests_total",
            {"role": role, "mode": "serve", "status": "timeout"},
        )
        == 1
    )


async def test_added_time_batched_like_observe() -> None:
    """graygate's added time (one histogram, no labels) lands where ``observe`` puts it."""
    reference = Histogram(
        "reference_added_seconds",
        "the same observations, one observe() each",
        buckets=metrics._ADDED_BUCKETS,
        registry=CollectorRegistry(),
    )

    def values(hist: Histogram) -> list[tuple[str, str | None, float]]:
        return [
            (s.name.rsplit("_", 1)[-1], s.labels.get("le"), s.value)
            for family in hist.collect()
            for s in family.samples
        ]

    metrics.flush()
    start = values(metrics.PROXY_ADDED)
    for seconds in (0.00001, 0.00004, 0.0002, 0.0009, 0.003, 0.3, 2.0):  # off the bounds
        observe_proxy_added(10.0, 10.0 + seconds + 0.5, 0.5)  # 0.5 s of it the upstream's
        reference.observe(seconds)
    observe_proxy_added(10.0, None, 0.5)  # no answer head: not observed
    metrics.flush()
    added = [
        (kind, le, round(v - v0, 9))
        for (kind, le, v), (_, _, v0) in zip(values(metrics.PROXY_ADDED), start, strict=True)
    ]
    assert added == [(kind, le, round(v, 9)) for kind, le, v in values(reference)]


async def test_updates_reach_prometheus_client_within_the_flush_interval() -> None:
    """Without a collection (another process's scrape reads the multiprocess files), the
    loop's timer hands the updates over."""
    role = "test-timer"
    metrics.flush()
    for _ in range(3):
        observe_upstream(role, "mirror", ENDPOINT, 200, 0.001)
    assert applied_requests(role, "mirror", "200") == 0  # pending, not yet handed over
    await asyncio.sleep(FLUSH_INTERVAL_S * 3)
    assert applied_requests(role, "mirror", "200") == 3


async def test_a_collection_from_another_thread_flushes_on_the_loop() -> None:
    """The admin port collects in a worker thread: the flush runs on the loop's thread
    (the only one that updates the pending counts) and the collection waits for it."""
    before = sample("graygate_mirror_outcomes_total", {"outcome": "reset"})
    skipped = sample("graygate_mirror_skipped_total", {"reason": "sampled_out"})
    count_mirror_outcome("reset")
    count_mirror_skip("sampled_out")
    count_mirror_skip("sampled_out")
    after = await asyncio.to_thread(sample, "graygate_mirror_outcomes_total", {"outcome": "reset"})
    assert after == before + 1
    assert sample("graygate_mirror_skipped_total", {"reason": "sampled_out"}) == skipped + 2


async def test_in_flight_gauge_nets_out() -> None:
    base = sample("graygate_mirror_in_flight", {})
    MIRROR_IN_FLIGHT.inc()
    MIRROR_IN_FLIGHT.inc()
    assert sample("graygate_mirror_in_flight", {}) == base + 2
    MIRROR_IN_FLIGHT.dec()
    MIRROR_IN_FLIGHT.dec()
    assert sample("graygate_mirror_in_flight", {}) == base


def test_off_a_loop_updates_apply_at_once() -> None:
    metrics.flush()  # what the module's loop left pending (its timer no longer runs)
    role = "test-sync"
    observe_upstream(role, "serve", ENDPOINT, 503, 0.01)
    assert applied_requests(role, "serve", "503") == 1


def test_updates_from_a_thread_other_than_the_pending_loops_are_never_lost() -> None:
    """A loop in another thread has updates pending (its timer not fired yet): this
    thread's updates go to prometheus_client at once, not into the dicts that thread swaps
    when it flushes (where they could be lost in the swap)."""
    import threading

    metrics.flush()
    role = "test-threads"
    loop = asyncio.new_event_loop()
    pending = threading.Event()
    stop = threading.Event()

    def other_thread() -> None:
        async def main() -> None:
            observe_upstream(role, "mirror", ENDPOINT, 200, 0.001)  # pending on this loop
            pending.set()
            while not stop.is_set():
                observe_upstream(role, "mirror", ENDPOINT, 200, 0.001)
                await asyncio.sleep(0)

        loop.run_until_complete(main())

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert pending.wait(10)
        # Long enough for that loop's timer to flush several times meanwhile.
        sent = 0
        until = time.monotonic() + FLUSH_INTERVAL_S * 4
        while time.monotonic() < until:
            for _ in range(1_000):
                observe_upstream(role, "serve", ENDPOINT, 200, 0.001)
            sent += 1_000
    finally:
        stop.set()
        thread.join(10)
    metrics.flush()
    loop.close()
    assert applied_requests(role, "serve", "200") == sent
