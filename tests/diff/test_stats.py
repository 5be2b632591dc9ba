"""Mann-Whitney U on latency samples: significance, effect sizes, percentiles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diff.stats import compare_latency, mann_whitney_greater, ratio


def lognormal(n: int, seed: int, scale: float = 1.0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(rng.lognormal(mean=math.log(20.0), sigma=0.3, size=n) * scale)


def test_equal_distributions_are_not_significant() -> None:
    primary, canary = lognormal(5000, 1), lognormal(5000, 2)
    mw = mann_whitney_greater(canary, primary)
    assert mw.p_value > 0.01
    assert abs(mw.common_language - 0.5) < 0.02
    assert abs(mw.rank_biserial) < 0.04


def test_twenty_percent_slower_is_significant_with_a_large_effect() -> None:
    primary, canary = lognormal(2000, 1), lognormal(2000, 2, scale=1.2)
    mw = mann_whitney_greater(canary, primary)
    assert mw.p_value < 1e-10
    assert mw.common_language > 0.6 and mw.rank_biserial > 0.2
    # One-sided: the canary being faster is not "greater".
    assert mann_whitney_greater(primary, canary).p_value > 0.99


def test_effect_sizes_at_the_extremes() -> None:
    mw = mann_whitney_greater([10.0, 11.0, 12.0], [1.0, 2.0, 3.0])
    assert mw.common_language == 1.0 and mw.rank_biserial == 1.0
    mw = mann_whitney_greater([1.0, 2.0], [10.0, 11.0])
    assert mw.common_language == 0.0 and mw.rank_biserial == -1.0
    # Ties count half.
    mw = mann_whitney_greater([5.0, 5.0], [5.0, 5.0])
    assert mw.common_language == 0.5 and mw.p_value > 0.4


def test_empty_sample_is_refused() -> None:
    with pytest.raises(ValueError):
        mann_whitney_greater([], [1.0])


def test_compare_latency_percentiles_and_ratios() -> None:
    primary = [float(x) for x in range(1, 101)]
    canary = [x * 1.1 for x in primary]
    c = compare_latency(primary, canary)
    assert c.primary_p50 == pytest.approx(50.5)
    assert c.primary_p99 == pytest.approx(99.01)
    assert c.p50_ratio == pytest.approx(1.1) and c.p99_ratio == pytest.approx(1.1)
    assert c.increase == pytest.approx(0.1)
    assert (c.n_primary, c.n_canary) == (100, 100)
    # Percentiles handed in (from percentile_cont) are used as they are.
    c2 = compare_latency(primary, canary, percentiles=(1.0, 2.0, 1.0, 4.0))
    assert c2.p50_ratio == 1.0 and c2.p99_ratio == 2.0 and c2.increase == pytest.approx(1.0)


def test_ratio_edges() -> None:
    assert ratio(0.0, 0.0) == 1.0
    assert math.isinf(ratio(1.0, 0.0))
    assert ratio(3.0, 2.0) == 1.5
