"""diff.runtime_checks: parsing, the pause ring, windows, leaks and the runtime check (pure)."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.schema import RuntimeConfig, RuntimeSource
from diff.runtime_checks import (
    MIN_BASELINE_PAUSES,
    PAUSE_RING,
    RISING_FRACTION,
    TREND_ALPHA,
    TREND_MIN_SHARE,
    Baseline,
    RuntimeParseError,
    RuntimeSample,
    Trend,
    analyse,
    baseline_from_pauses,
    baseline_from_samples,
    choose_baseline,
    is_leak,
    mann_kendall_p,
    merge,
    new_pauses,
    parse_expvar,
    parse_prometheus,
    percentile,
    runtime_check,
    theil_sen,
    with_new_pauses,
)
from store.runtime_samples import StoredSample

DATA = Path(__file__).parent / "data"
T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
MS = 1_000_000  # ns


def _load(name: str) -> bytes:
    return (DATA / name).read_bytes()


# --------------------------------------------------------------------------- expvar


def test_parse_expvar_from_the_go_canary() -> None:
    """A document captured from examples/canary (GOGC=1, after 2000 requests)."""
    s = parse_expvar(_load("expvar_go_canary_a.json"), taken_at=T0)
    doc = json.loads(_load("expvar_go_canary_a.json"))
    mem = doc["memstats"]
    assert s.source == "expvar" and s.error is None
    assert s.goroutines == doc["goroutines"] == 6
    assert s.num_gc == mem["NumGC"] == 14
    assert s.heap_alloc == mem["HeapAlloc"] and s.heap_inuse == mem["HeapInuse"]
    assert s.gc_cpu_fraction == pytest.approx(mem["GCCPUFraction"])
    assert s.pause_ring is not None and len(s.pause_ring) == PAUSE_RING
    assert s.pause_total_ns == mem["PauseTotalNs"]
    assert s.pauses_ns == ()  # a lone reading has no "since the previous one"


def test_pauses_between_two_real_expvar_readings() -> None:
    a = parse_expvar(_load("expvar_go_canary_a.json"), taken_at=T0)
    b = parse_expvar(_load("expvar_go_canary_b.json"), taken_at=T0 + timedelta(seconds=1))
    assert (a.num_gc, b.num_gc) == (14, 17)
    got = with_new_pauses(a, b)
    assert b.pause_ring is not None and b.num_gc is not None
    # GC number n (from 1) sits at (n + 255) % 256: GCs 15, 16, 17.
    assert got.pauses_ns == tuple(b.pause_ring[(n + 255) % 256] for n in (15, 16, 17))
    assert got.pauses_lost == 0
    # The latest pause is at (NumGC + 255) % 256.
    assert got.pauses_ns[-1] == b.pause_ring[(b.num_gc + 255) % 256]


def test_pauses_after_the_ring_wrapped_between_real_readings() -> None:
    """2475 collections between two readings of the canary: the ring keeps 256."""
    a = parse_expvar(_load("expvar_go_canary_wrap_before.json"), taken_at=T0)
    b = parse_expvar(_load("expvar_go_canary_wrap_after.json"), taken_at=T0)
    assert a.num_gc is not None and b.num_gc is not None and b.pause_ring is not None
    n = b.num_gc - a.num_gc
    assert n > PAUSE_RING
    got = with_new_pauses(a, b)
    assert len(got.pauses_ns) == PAUSE_RING
    assert got.pauses_lost == n - PAUSE_RING
    # Oldest first: the kept ones are GCs NumGC-255 .. NumGC.
    expected = [b.pause_ring[(g - 1) % 256] for g in range(b.num_gc - 255, b.num_gc + 1)]
    assert list(got.pauses_ns) == expected
    assert got.pauses_ns[-1] == b.pause_ring[(b.num_gc + 255) % 256]
    assert sorted(got.pauses_ns) == sorted(b.pause_ring)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"<html>nope</html>", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"cmdline": ["x"]}', "neither memstats nor goroutines"),
    ],
)
def test_parse_expvar_rejects_what_is_not_expvar(body: bytes, message: str) -> None:
    with pytest.raises(RuntimeParseError, match=message):
        parse_expvar(body, taken_at=T0)


def test_parse_expvar_without_memstats_keeps_goroutines() -> None:
    s = parse_expvar({"goroutines": 12}, taken_at=T0)
    assert s.goroutines == 12 and s.num_gc is None and s.pause_ring is None


# --------------------------------------------------------------------------- the pause ring


def _go_ring(pauses: Sequence[int]) -> list[int]:
    """The PauseNs ring as the Go runtime leaves it after collections with ``pauses``."""
    ring = [0] * PAUSE_RING
    for n, p in enumerate(pauses, start=1):
        ring[(n + 255) % 256] = p
    return ring


@pytest.mark.parametrize(
    "prev, now, kept_from, lost",
    [
        (10, 10, None, 0),  # no collection
        (10, 13, 11, 0),
        (0, 256, 1, 0),  # exactly the ring
        (0, 257, 2, 1),  # one too many: GC 1 was overwritten
        (100, 1000, 745, 644),  # wrapped several times
        (250, 260, 251, 0),  # across the ring's end without loss
    ],
)
def test_new_pauses_ring_arithmetic(prev: int, now: int, kept_from: int | None, lost: int) -> None:
    all_pauses = [1000 + n for n in range(1, now + 1)]  # GC n paused 1000+n ns
    pauses, got_lost = new_pauses(_go_ring(all_pauses), prev, now)
    expected = () if kept_from is None else tuple(1000 + n for n in range(kept_from, now + 1))
    assert pauses == expected
    assert got_lost == lost


def test_new_pauses_first_reading_and_restart() -> None:
    ring = _go_ring([7, 8, 9])
    assert new_pauses(ring, None, 3) == ((), 0)  # before sampling began: not ours
    assert new_pauses(ring, 500, 3) == ((7, 8, 9), 0)  # count went down: restarted
    with pytest.raises(ValueError, match="256"):
        new_pauses([1, 2, 3], 0, 3)


def test_with_new_pauses_skips_failed_readings() -> None:
    good = RuntimeSample(T0, "expvar", num_gc=3, pause_ring=tuple(_go_ring([5, 6, 7])))
    failed = RuntimeSample.failed(T0 + timedelta(seconds=1), "expvar", "refused")
    assert with_new_pauses(good, failed) is failed
    later = RuntimeSample(
        T0 + timedelta(seconds=2), "expvar", num_gc=5, pause_ring=tuple(_go_ring([5, 6, 7, 8, 9]))
    )
    assert with_new_pauses(good, later).pauses_ns == (8, 9)
    assert with_new_pauses(None, later).pauses_ns == ()


# --------------------------------------------------------------------------- Prometheus

# The Go client library's exposition (client_golang's Go collector), two scrapes 10 s apart.
PROM_1 = """\
# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile="0"} 3.1e-05
go_gc_duration_seconds{quantile="0.25"} 4.9e-05
go_gc_duration_seconds{quantile="0.5"} 6.3e-05
go_gc_duration_seconds{quantile="0.75"} 0.000105
go_gc_duration_seconds{quantile="1"} 0.002187
go_gc_duration_seconds_sum 0.0412
go_gc_duration_seconds_count 401
# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
# HELP go_info Information about the Go environment.
# TYPE go_info gauge
go_info{version="go1.19.8"} 1
# HELP go_memstats_alloc_bytes Number of bytes allocated and still in use.
# TYPE go_memstats_alloc_bytes gauge
go_memstats_alloc_bytes 4.194568e+06
# HELP go_memstats_gc_cpu_fraction The fraction of this program's available CPU time used by \
the GC since the program started.
# TYPE go_memstats_gc_cpu_fraction gauge
go_memstats_gc_cpu_fraction 0.00123
# HELP go_memstats_heap_alloc_bytes Number of heap bytes allocated and still in use.
# TYPE go_memstats_heap_alloc_bytes gauge
go_memstats_heap_alloc_bytes 4.194568e+06
# HELP go_memstats_heap_inuse_bytes Number of heap bytes that are in use.
# TYPE go_memstats_heap_inuse_bytes gauge
go_memstats_heap_inuse_bytes 6.127616e+06
# HELP go_memstats_last_gc_time_seconds Number of seconds since 1970 of last garbage collection.
# TYPE go_memstats_last_gc_time_seconds gauge
go_memstats_last_gc_time_seconds 1.7642448e+09
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.76424474e+09
# HELP promhttp_metric_handler_requests_total Total number of scrapes by HTTP status code.
# TYPE promhttp_metric_handler_requests_total counter
promhttp_metric_handler_requests_total{code="200"} 12
"""

PROM_2 = (
    PROM_1.replace("go_gc_duration_seconds_sum 0.0412", "go_gc_duration_seconds_sum 0.0452")
    .replace("go_gc_duration_seconds_count 401", "go_gc_duration_seconds_count 405")
    .replace("go_goroutines 42", "go_goroutines 45")
)


def test_parse_prometheus_go_collector() -> None:
    s = parse_prometheus(PROM_1, taken_at=T0)
    assert s.source == "prometheus" and s.error is None
    assert s.goroutines == 42
    assert s.heap_alloc == 4_194_568 and s.heap_inuse == 6_127_616
    assert s.num_gc == 401
    assert s.pause_total_ns == 41_200_000
    assert s.gc_cpu_fraction == pytest.approx(0.00123)
    assert s.pause_ring is None


def test_prometheus_pauses_between_scrapes_are_their_mean() -> None:
    a = parse_prometheus(PROM_1, taken_at=T0)
    b = parse_prometheus(PROM_2, taken_at=T0 + timedelta(seconds=10))
    got = with_new_pauses(a, b)
    assert got.pauses_ns == (1_000_000,) * 4  # 4 collections, 4 ms between them
    assert with_new_pauses(None, b).pauses_ns == ()


@pytest.mark.parametrize(
    "text, message",
    [
        ("this is { not prometheus", "cannot parse"),
        ("# TYPE http_requests_total counter\nhttp_requests_total 3\n", "no go_goroutines"),
    ],
)
def test_parse_prometheus_rejects(text: str, message: str) -> None:
    with pytest.raises(RuntimeParseError, match=message):
        parse_prometheus(text, taken_at=T0)


def test_merge_fills_what_expvar_lacks() -> None:
    doc = json.loads(_load("expvar_go_canary_a.json"))
    del doc["goroutines"]  # plain expvar publishes no goroutine count
    ev = parse_expvar(doc, taken_at=T0)
    merged = merge(ev, parse_prometheus(PROM_1, taken_at=T0))
    assert merged.goroutines == 42
    assert merged.num_gc == 14 and merged.pause_ring == ev.pause_ring  # pauses stay expvar's
    assert merged.heap_inuse == ev.heap_inuse


# --------------------------------------------------------------------------- statistics


def test_percentile_and_theil_sen() -> None:
    assert percentile([1, 2, 3, 4, 5], 50) == 3
    assert percentile([5, 7, 40], 99) == pytest.approx(39.34)
    assert percentile([9], 99) == 9
    xs = [float(i) for i in range(20)]
    ys = [2.0 * x + 5 for x in xs]
    ys[3] = 500.0  # an outlier least squares would follow
    slope, intercept = theil_sen(xs, ys)
    assert slope == pytest.approx(2.0) and intercept == pytest.approx(5.0)
    many = [float(i) for i in range(3000)]  # thinned, still exact on a line
    assert theil_sen(many, [3 * x for x in many])[0] == pytest.approx(3.0)


# --------------------------------------------------------------------------- the check


def cfg(**kw: object) -> RuntimeConfig:
    base: dict[str, object] = {
        "canary": RuntimeSource(expvar="http://127.0.0.1:1/debug/vars"),
        "interval_s": 1.0,
        "window_s": 10.0,
    }
    base.update(kw)
    return RuntimeConfig.model_validate(base)


IntAt = int | Callable[[int], int]
PausesAt = tuple[int, ...] | Callable[[int], tuple[int, ...]]


def series(
    seconds: int,
    *,
    goroutines: IntAt = 20,
    pauses: PausesAt = (MS,),
    heap: IntAt = 10_000_000,
    gc_cpu: float | None = 0.01,
) -> list[RuntimeSample]:
    """One sample a second; each argument is a value or a function of the second."""
    out = []
    num_gc = 0
    for t in range(seconds):
        ps = pauses(t) if callable(pauses) else pauses
        num_gc += len(ps)
        h = heap(t) if callable(heap) else heap
        out.append(
            RuntimeSample(
                taken_at=T0 + timedelta(seconds=t),
                source="expvar",
                goroutines=goroutines(t) if callable(goroutines) else goroutines,
                heap_alloc=h,
                heap_inuse=h,
                num_gc=num_gc,
                gc_cpu_fraction=gc_cpu,
                pauses_ns=ps,
            )
        )
    return out


def slow_in(windows: set[int], *, slow_ms: int = 50) -> Callable[[int], tuple[int, ...]]:
    """Pauses: 1 ms, but one 50 ms pause a second in the given 10 s windows."""

    def pauses(t: int) -> tuple[int, ...]:
        return (MS, slow_ms * MS) if t // 10 in windows else (MS, MS)

    return pauses


def test_three_failing_windows_in_a_row_fail() -> None:
    check = runtime_check(
        series(80, pauses=slow_in({2, 3, 4})), cfg(gc_pause_budget_ms=10), baseline=None
    )
    assert check.name == "runtime"
    assert check.passed is False and check.blocking
    assert "3 consecutive windows: windows 2-4 of 10s (20-50s into sampling)" in check.detail
    assert "worst 50 ms" in check.detail
    assert check.observed["failing_run_windows"] == [2, 4]
    assert set(check.observed["failing_window_p99_ms"]) == {"2", "3", "4"}
    assert check.observed["failing_windows"] == 3
    assert check.observed["max_consecutive_failing_windows"] == 3
    assert check.observed["windows"] == 8
    assert check.threshold["pause_p99_ms"] == 10
    assert check.observed["baseline"]["source"] == "budget"


def sparse_slow_in(windows: set[int]) -> Callable[[int], tuple[int, ...]]:
    """Pauses: twenty 1 ms pauses a second; in the given 10 s windows three of the window's
    200 pauses take 50 ms: enough for the window's p99, too few for a whole run's."""

    def pauses(t: int) -> tuple[int, ...]:
        if t // 10 in windows and t % 10 == 0:
            return (MS,) * 17 + (50 * MS,) * 3
        return (MS,) * 20

    return pauses


def test_two_failing_windows_in_a_row_pass_when_the_run_as_a_whole_is_under() -> None:
    check = runtime_check(
        series(80, pauses=sparse_slow_in({1, 2, 4, 5})), cfg(gc_pause_budget_ms=10), baseline=None
    )
    assert check.passed is True, check.detail
    assert check.observed["failing_windows"] == 4
    assert check.observed["max_consecutive_failing_windows"] == 2
    assert check.observed["pause_p99_ms"] < 10
    assert check.observed["gc_pending"] is False
    assert "4 of 8 windows over" in check.detail


def test_failing_windows_spread_over_the_run_fail_when_the_run_as_a_whole_is_over() -> None:
    """A canary over its budget every other window is not healthy because no three windows
    in a row failed: 4 of 8 windows over, a quarter of all pauses at 50 ms."""
    check = runtime_check(
        series(80, pauses=slow_in({1, 2, 4, 5})), cfg(gc_pause_budget_ms=10), baseline=None
    )
    assert check.passed is False and check.blocking, check.detail
    assert check.observed["max_consecutive_failing_windows"] == 2
    assert check.observed["pause_p99_ms"] == 50
    assert "in 4 of 8 windows (not in a row) and over the whole run: 50 ms" in check.detail


def test_the_ci_reproduction_three_of_six_windows_alternating_fail() -> None:
    """What a loaded machine made of the demo's gc_pressure canary (20 ms pauses, budget
    10 ms): windows over and under in turn, 3 of 6 over, and two polls failed. It got GO."""

    def pauses(t: int) -> tuple[int, ...]:
        return (34 * MS,) * 5 if (t // 10) % 2 == 0 else (MS,) * 5

    samples = series(60, pauses=pauses)
    samples[13] = RuntimeSample.failed(samples[13].taken_at, "expvar", "timeout")
    samples[41] = RuntimeSample.failed(samples[41].taken_at, "expvar", "timeout")
    check = runtime_check(samples, cfg(gc_pause_budget_ms=10), baseline=None)
    assert check.observed["failing_windows"] == 3
    assert check.observed["max_consecutive_failing_windows"] == 1
    assert check.passed is False, check.detail
    assert "2 of 60 polls failed" in check.detail


def test_a_whole_run_over_in_too_few_windows_waits() -> None:
    """Two windows over (not the latest ones) carry a quarter of the run's pauses at 50 ms:
    the run's p99 is over, and one more such window anywhere fails it. Not a pass."""
    check = runtime_check(
        series(80, pauses=slow_in({1, 3})), cfg(gc_pause_budget_ms=10), baseline=None
    )
    assert check.passed is None and check.blocking, check.detail
    assert check.observed["gc_pending"] is True
    assert "over the whole run 50 ms is over 10 ms (budget), in 2 of 8 windows" in check.detail
    assert "3 such windows fail: waiting for the next window" in check.detail


@pytest.mark.parametrize("latest", [{7}, {6, 7}])
def test_failing_latest_windows_are_undecided_never_a_pass(latest: set[int]) -> None:
    """The last windows are over the threshold but fewer than failing_windows in a row: the
    next window may complete the run, so the check waits (INCONCLUSIVE), required or not."""
    for required in (True, False):
        check = runtime_check(
            series(80, pauses=sparse_slow_in({1, 2, 4} | latest)),
            cfg(gc_pause_budget_ms=10, required=required),
            baseline=None,
        )
        assert check.passed is None and check.blocking, check
        assert check.observed["gc_pending"] is True
        assert f"in the last {len(latest)} window(s)" in check.detail, check.detail
    complete = runtime_check(
        series(80, pauses=sparse_slow_in({1, 2, 4, 5, 6, 7})),
        cfg(gc_pause_budget_ms=10),
        baseline=None,
    )
    assert complete.passed is False, complete.detail
    assert complete.observed["gc_pending"] is False


def test_failing_windows_is_configurable_and_quiet_windows_carry_no_evidence() -> None:
    def pauses(t: int) -> tuple[int, ...]:
        w = t // 10
        if w in (3, 5):
            return ()  # no collection in these windows
        if w in (2, 4, 6):
            return (MS,) * 17 + (50 * MS,) * 3 if t % 10 == 0 else (MS,) * 20
        return (MS,) * 20

    samples = series(80, pauses=pauses)
    # 2, (3 quiet), 4, (5 quiet), 6: three failing windows with evidence, in a row.
    assert runtime_check(samples, cfg(gc_pause_budget_ms=10), baseline=None).passed is False
    assert (
        runtime_check(samples, cfg(gc_pause_budget_ms=10, failing_windows=4), baseline=None).passed
        is True
    )


@settings(max_examples=300, deadline=None)
@given(
    slow=st.lists(st.booleans(), min_size=1, max_size=12),
    dense=st.booleans(),
    failing_windows=st.integers(min_value=1, max_value=5),
)
def test_never_a_pass_with_the_whole_run_over_or_enough_windows_in_a_row(
    slow: list[bool], dense: bool, failing_windows: int
) -> None:
    """Whatever windows are over the budget: the check fails when failing_windows of them
    are in a row, and never passes while the p99 of all the run's pauses is over."""
    windows = {i for i, s in enumerate(slow) if s}
    pauses = slow_in(windows) if dense else sparse_slow_in(windows)
    check = runtime_check(
        series(10 * len(slow), pauses=pauses),
        cfg(gc_pause_budget_ms=10, failing_windows=failing_windows),
        baseline=None,
    )
    longest = max((len(list(g)) for k, g in itertools.groupby(slow) if k), default=0)
    if longest >= failing_windows:
        assert check.passed is False, check.detail
    if check.observed["pause_p99_ms"] > 10:
        assert check.passed is not True, check.detail
    if not windows:
        assert check.passed is not False, check.detail


def test_baseline_threshold_is_two_means_plus_three_sigma() -> None:
    base = Baseline(source="primary", mean_ms=2.0, sigma_ms=1.0, pauses=500)
    assert base.threshold_ms == 7.0
    at_8ms = series(60, pauses=(8 * MS,))
    at_6ms = series(60, pauses=(6 * MS,))
    failed = runtime_check(at_8ms, cfg(), baseline=base)
    assert failed.passed is False and "(primary)" in failed.detail
    assert runtime_check(at_6ms, cfg(), baseline=base).passed is True
    # A budget in the configuration wins over the baseline it is given.
    assert runtime_check(at_8ms, cfg(gc_pause_budget_ms=9), baseline=base).passed is True


def test_baselines_from_pauses_and_samples() -> None:
    assert baseline_from_pauses([MS] * (MIN_BASELINE_PAUSES - 1), "primary") is None
    b = baseline_from_pauses([MS, 3 * MS] * 10, "previous_run", run_id=7)
    assert b is not None and b.run_id == 7
    assert b.mean_ms == pytest.approx(2.0) and b.sigma_ms == pytest.approx(1.026, abs=1e-3)
    prim = baseline_from_samples(series(20, pauses=(2 * MS,)))
    assert prim is not None and prim.source == "primary" and prim.pauses == 20
    assert Baseline.from_ns("primary", 3, 1.0, 0.0) is None
    c = cfg()
    assert choose_baseline(c, primary=prim, previous=b) is b  # no Go primary configured
    with_primary = cfg(primary=RuntimeSource(expvar="http://127.0.0.1:2/debug/vars"))
    assert choose_baseline(with_primary, primary=prim, previous=b) is prim
    assert choose_baseline(with_primary, primary=None, previous=b) is b
    budget = choose_baseline(cfg(gc_pause_budget_ms=3), primary=prim, previous=b)
    assert budget is not None and budget.source == "budget" and budget.threshold_ms == 3


def test_no_baseline_leaves_pauses_unjudged() -> None:
    check = runtime_check(series(60, pauses=(500 * MS,)), cfg(), baseline=None)
    assert check.passed is True  # goroutines were judged, and are flat
    assert "GC pauses not judged: no baseline" in check.detail
    assert check.observed["pause_p99_ms"] == pytest.approx(500)
    assert check.observed["baseline"] is None


def test_a_goroutine_leak_fails() -> None:
    # Steady load of 5 requests a second, each leaking one goroutine.
    check = runtime_check(series(60, goroutines=lambda t: 12 + 5 * t), cfg(), baseline=None)
    assert check.passed is False
    assert "goroutine leak" in check.detail
    assert check.observed["goroutine_slope_per_s"] == pytest.approx(5.0)
    assert check.observed["goroutine_growth"] > 0.5
    assert check.observed["goroutine_rising_windows"] == "4/4"


def test_a_flat_noisy_goroutine_count_passes() -> None:
    rnd = random.Random(7)
    check = runtime_check(
        series(120, goroutines=lambda t: rnd.randint(8, 40)), cfg(), baseline=None
    )
    assert check.passed is True, check.detail
    assert abs(check.observed["goroutine_growth"]) < 0.5


def test_a_step_when_load_starts_is_not_a_leak() -> None:
    # Idle for 25 s, then a higher but steady level: grows once, does not keep growing.
    check = runtime_check(
        series(60, goroutines=lambda t: 6 if t < 25 else 80), cfg(), baseline=None
    )
    assert check.passed is True, check.detail


def test_a_slow_steady_rise_under_the_total_bound_fails_by_trend() -> None:
    # +20 goroutines on a base of 100 over the span (20 % < 50 %), rising in every window.
    check = runtime_check(series(60, goroutines=lambda t: 100 + t // 3), cfg(), baseline=None)
    assert check.passed is False, check.detail
    assert "goroutine leak by trend" in check.detail


def test_a_rise_below_the_trend_share_passes() -> None:
    # +20 goroutines on a base of 1000 (2 %): steady and significant, but under
    # TREND_MIN_SHARE of the 50 % bound (10 %): pools growing, not a leak worth a NO_GO.
    check = runtime_check(series(60, goroutines=lambda t: 1000 + t // 3), cfg(), baseline=None)
    assert check.passed is True, check.detail
    assert check.observed["goroutine_trend_p"] < TREND_ALPHA


# A ten-minute run, one poll a second, one-minute windows: the case.
TEN_MIN = 600


def test_steady_leak_of_42_percent_rising_in_every_window_fails() -> None:
    rnd = random.Random(42)
    samples = series(TEN_MIN, goroutines=lambda t: 100 + (42 * t) // TEN_MIN + rnd.randint(-2, 2))
    check = runtime_check(samples, cfg(window_s=60.0), baseline=None)
    assert check.passed is False, check.detail
    assert "goroutine leak by trend" in check.detail
    assert check.observed["goroutine_rising_windows"] == "8/8"
    # Under the total-growth bound: the old rule alone passed it.
    assert 0.2 < check.observed["goroutine_growth"] < 0.5
    assert check.observed["goroutine_trend_p"] < TREND_ALPHA
    assert all(p < TREND_ALPHA for p in check.observed["goroutine_trend_p_halves"])
    assert check.threshold["trend_alpha"] == TREND_ALPHA


def test_noisy_flat_ten_minutes_passes() -> None:
    for seed in range(5):
        rnd = random.Random(seed)
        samples = series(TEN_MIN, goroutines=lambda t, r=rnd: r.randint(80, 120))
        check = runtime_check(samples, cfg(window_s=60.0), baseline=None)
        assert check.passed is True, (seed, check.detail)


def test_one_step_up_then_flat_ten_minutes_passes() -> None:
    # +42 % in one step at 3 minutes, then flat with noise: significant over the span
    # (the step), but not in the second half, and not rising in most windows.
    for seed in range(5):
        rnd = random.Random(seed)
        samples = series(
            TEN_MIN, goroutines=lambda t, r=rnd: (100 if t < 180 else 142) + r.randint(-2, 2)
        )
        check = runtime_check(samples, cfg(window_s=60.0), baseline=None)
        assert check.passed is True, (seed, check.detail)
        assert check.observed["goroutine_trend_p_halves"][1] >= TREND_ALPHA


def _levels(levels: Sequence[int]) -> Callable[[int], int]:
    """Goroutines: window 0 (warm-up) at the first level, then one level per 10 s window."""
    return lambda t: levels[min(t // 10, len(levels) - 1)]


def test_rising_fraction_at_the_bound() -> None:
    # After warm-up: 6 windows, 5 steps. 3 of 5 rising (== RISING_FRACTION) is a leak.
    assert RISING_FRACTION == 0.6
    at = series(70, goroutines=_levels([100, 100, 110, 110, 120, 120, 130]))
    check = runtime_check(at, cfg(), baseline=None)
    assert check.observed["goroutine_rising_windows"] == "3/5"
    assert check.passed is False and "leak by trend" in check.detail, check.detail
    # 2 of 5 rising, same total and still significant in both halves: not steady, passes.
    under = series(70, goroutines=_levels([100, 100, 115, 115, 115, 115, 130]))
    check = runtime_check(under, cfg(), baseline=None)
    assert check.observed["goroutine_rising_windows"] == "2/5"
    assert check.observed["goroutine_trend_p"] < TREND_ALPHA
    assert check.passed is True, check.detail


def _trend(**kw: object) -> Trend:
    base: dict[str, Any] = {
        "points": 100, "windows": 6, "span_s": 100.0, "slope_per_s": 0.3, "start": 100.0,
        "growth": 30.0, "relative": 0.3, "rising": 5, "steps": 5, "p_value": 1e-6,
        "p_halves": (1e-4, 1e-4),
    }  # fmt: skip
    base.update(kw)
    return Trend(**base)


def test_is_leak_bounds() -> None:
    bound = 0.5
    share = TREND_MIN_SHARE * bound
    assert is_leak(_trend(), bound, min_growth=10) == "trend"
    assert is_leak(_trend(relative=0.51), bound, min_growth=10) == "growth"
    # The trend share: at it a leak, just under not.
    assert is_leak(_trend(relative=share), bound, min_growth=10) == "trend"
    assert is_leak(_trend(relative=share - 1e-9), bound, min_growth=10) is None
    # The significance level: p must be below alpha over the span and in both halves.
    assert is_leak(_trend(p_value=TREND_ALPHA), bound, min_growth=10) is None
    assert is_leak(_trend(p_halves=(1e-4, TREND_ALPHA)), bound, min_growth=10) is None
    assert is_leak(_trend(p_value=TREND_ALPHA * 0.999), bound, min_growth=10) == "trend"
    # The absolute floor and the rising share apply to both rules.
    assert is_leak(_trend(growth=9.9, relative=0.9), bound, min_growth=10) is None
    assert is_leak(_trend(rising=2, relative=0.9), bound, min_growth=10) is None
    assert is_leak(_trend(rising=3), bound, min_growth=10) == "trend"


def test_mann_kendall_p() -> None:
    xs = [float(i) for i in range(20)]
    assert mann_kendall_p(xs, xs) < 1e-6
    assert mann_kendall_p(xs, [-x for x in xs]) > 0.99
    assert mann_kendall_p(xs, [5.0] * 20) == 1.0  # constant: cannot tell
    assert mann_kendall_p(xs[:3], xs[:3]) == 1.0  # too few points
    with pytest.raises(ValueError, match="differ in length"):
        mann_kendall_p(xs, xs[:3])


def test_a_steady_heap_leak_fails_by_trend_when_bounded() -> None:
    rnd = random.Random(3)
    heap = lambda t: 50_000_000 + 20_000 * t + rnd.randint(-200_000, 200_000)  # noqa: E731
    samples = series(TEN_MIN, heap=heap)
    check = runtime_check(samples, cfg(window_s=60.0, max_heap_growth=1.0), baseline=None)
    assert check.passed is False and "heap leak by trend" in check.detail, check.detail
    assert runtime_check(samples, cfg(window_s=60.0), baseline=None).passed is True


def test_too_few_windows_is_undecided() -> None:
    check = runtime_check(series(25), cfg(), baseline=None)
    assert check.passed is None
    assert "not enough data" in check.detail
    assert check.blocking is False
    assert runtime_check(series(25), cfg(required=True), baseline=None).blocking is True


@pytest.mark.parametrize("required", [False, True])
def test_no_data(required: bool) -> None:
    check = runtime_check([], cfg(required=required), baseline=None)
    assert check.passed is None
    assert check.detail == "no data"
    assert check.blocking is required  # required: INCONCLUSIVE; else ignored (GO)
    failed = [RuntimeSample.failed(T0 + timedelta(seconds=i), "expvar", "refused") for i in (0, 1)]
    check = runtime_check(failed, cfg(required=required), baseline=None)
    assert check.passed is None and check.detail == "no data: all 2 polls failed"
    assert check.observed["errors"] == 2


def test_heap_growth_and_gc_cpu_fail_only_when_bounded() -> None:
    growing = series(60, heap=lambda t: 10_000_000 + 1_000_000 * t, gc_cpu=0.2)
    unbounded = runtime_check(growing, cfg(), baseline=None)
    assert unbounded.passed is True
    assert unbounded.observed["heap_growth"] > 2
    assert unbounded.observed["gc_cpu_fraction"] == pytest.approx(0.2)
    assert "heap in use" in unbounded.detail and "GC CPU 20.00%" in unbounded.detail
    heap_bound = runtime_check(growing, cfg(max_heap_growth=1.0), baseline=None)
    assert heap_bound.passed is False and "heap in use" in heap_bound.detail
    cpu_bound = runtime_check(growing, cfg(max_gc_cpu_fraction=0.05), baseline=None)
    assert cpu_bound.passed is False and "GC CPU" in cpu_bound.detail
    assert cpu_bound.threshold["max_gc_cpu_fraction"] == 0.05


def test_failed_polls_are_counted_and_the_rest_judged() -> None:
    samples = series(60)
    samples[5] = RuntimeSample.failed(samples[5].taken_at, "expvar", "timeout")
    check = runtime_check(samples, cfg(), baseline=None)
    assert check.passed is True
    assert check.observed["errors"] == 1 and check.observed["samples"] == 60
    assert "1 of 60 polls failed" in check.detail


def test_stored_rows_are_judged_and_lost_pauses_derived() -> None:
    rows = [
        StoredSample(t, 1, "canary", T0 + timedelta(seconds=t), "expvar", 20, 1, 1,
            10 * t if t < 30 else 10 * t + 300, None, () if t == 0 else (MS,) * 10, None)
        for t in range(60)
    ]  # fmt: skip
    a = analyse(rows, cfg(), baseline=None)
    assert a.pauses == 590
    assert a.pauses_lost == 300  # GC count jumped by 310 with 10 pauses recorded
    check = runtime_check(rows, cfg(gc_pause_budget_ms=5), baseline=None)
    assert check.passed is True
    assert check.observed["pauses_lost"] == 300
    assert "300 pauses not seen" in check.detail


def test_observed_is_plain_json() -> None:
    check = runtime_check(series(60), cfg(gc_pause_budget_ms=5), baseline=None)
    doc = json.loads(json.dumps(check.as_dict()))
    assert set(doc["observed"]) >= {
        "windows",
        "failing_windows",
        "pause_p99_ms",
        "baseline",
        "goroutine_slope_per_s",
        "goroutine_growth",
        "heap_growth",
        "gc_cpu_fraction",
    }
