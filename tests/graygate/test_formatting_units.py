"""Values with their units: a check's observed value and threshold never a bare float."""

from __future__ import annotations

from graygate.formatting import check_values, delta_ms, fraction_of, runtime_check_rows, share
from graygate.values import Check


def test_fractions_and_milliseconds_carry_their_units() -> None:
    assert fraction_of(0.78) == "0.78 (78% of pairs)"
    assert share(4, 14) == "4 (28.6% of pairs)"
    assert share(4, 0) == "4"
    assert delta_ms(3.2) == "+3.20 ms" and delta_ms(-12.34) == "-12.3 ms"


def test_check_values_by_check() -> None:
    strict = Check("strict", False, 0.285714, 0.0, "")
    assert check_values(strict) == ("0.286 (28.6% of pairs)", "≤ 0 (0% of pairs)")
    latency = Check("latency", True, 0.12, {"max_increase": 0.1, "alpha": 0.01}, "")
    assert check_values(latency) == ("+12% (slowest endpoint)", "≤ +10%, significant at p < 0.01")
    evidence = Check("evidence", True, 250, {"min_pairs": 200, "min_pairs_per_endpoint": 20}, "")
    assert check_values(evidence) == ("250 pairs", "≥ 200 pairs, ≥ 20 per endpoint")


def test_runtime_check_is_a_small_table() -> None:
    observed = {
        "samples": 12,
        "errors": 1,
        "windows": 4,
        "failing_windows": 3,
        "max_consecutive_failing_windows": 3,
        "pauses": 40,
        "pauses_lost": 0,
        "pause_p99_ms": 1.25,
        "worst_window_p99_ms": 2.5,
        "baseline": {"source": "primary", "mean_ms": 0.2, "sigma_ms": 0.05, "pauses": 30},
        "goroutines": 900,
        "goroutine_growth": 3.5,
        "goroutine_rising_windows": "3/3",
        "heap_growth": 0.1,
        "gc_cpu_fraction": 0.004,
    }
    threshold = {
        "pause_p99_ms": 0.55,
        "failing_windows": 3,
        "max_goroutine_growth": 0.5,
        "max_heap_growth": 1.0,
        "max_gc_cpu_fraction": 0.05,
    }
    rows = dict(
        (r[0], r[1:]) for r in runtime_check_rows(Check("runtime", False, observed, threshold, ""))
    )
    assert rows["GC pause p99 (run / worst window)"] == ("1.25 ms / 2.50 ms", "≤ 0.55 ms")
    assert rows["goroutines (growth, rising windows)"] == ("900 (+350%, 3/3)", "≤ +50%")
    assert rows["GC CPU"] == ("0.4%", "≤ 5%")
    assert not any("=" in cell for row in rows.values() for cell in row)  # no key=value dump
    assert runtime_check_rows(Check("runtime", None, {"samples": 0}, {}, "")) == []
