"""Latency statistics for the verdict: a one-sided Mann-Whitney U test with its effect size.

Pure: numbers in, numbers out. The verdict fails latency only when the canary is slower
*significantly* (p < alpha, so noise alone never fails a run) AND by more than the
configured margin at p50 or p99 (so a tiny, real, shift passes).

Effect sizes reported with the test:

- common-language effect size ``CL = U / (n1 * n2)``: the probability that a random canary
  latency exceeds a random primary one (ties count half); 0.5 means no difference;
- rank-biserial correlation ``r = 2 * CL - 1`` in [-1, 1]; positive means the canary is slower.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LatencyComparison", "MannWhitney", "compare_latency", "mann_whitney_greater", "ratio"]


@dataclass(frozen=True, slots=True)
class MannWhitney:
    """One-sided test that the first sample (canary) is stochastically greater."""

    u: float  # U statistic of the first sample
    p_value: float
    common_language: float  # P(canary > primary) + P(tie) / 2
    rank_biserial: float  # 2 * common_language - 1


@dataclass(frozen=True, slots=True)
class LatencyComparison:
    n_primary: int
    n_canary: int
    test: MannWhitney
    primary_p50: float
    primary_p99: float
    canary_p50: float
    canary_p99: float

    @property
    def p50_ratio(self) -> float:
        return ratio(self.canary_p50, self.primary_p50)

    @property
    def p99_ratio(self) -> float:
        return ratio(self.canary_p99, self.primary_p99)

    @property
    def increase(self) -> float:
        """The larger of the relative p50 and p99 increases (negative: the canary is faster)."""
        return max(self.p50_ratio, self.p99_ratio) - 1.0


def ratio(canary: float, primary: float) -> float:
    """canary / primary, with 0/0 = 1 and x/0 = inf."""
    if primary > 0:
        return canary / primary
    return 1.0 if canary <= 0 else math.inf


def mann_whitney_greater(canary: Sequence[float], primary: Sequence[float]) -> MannWhitney:
    """Is ``canary`` stochastically greater than ``primary``? Both need at least one value."""
    if len(canary) == 0 or len(primary) == 0:
        raise ValueError("Mann-Whitney U needs two non-empty samples")
    from scipy.stats import mannwhitneyu  # scipy.stats takes ~1 s to import: only when used

    a = np.asarray(canary, dtype=float)
    b = np.asarray(primary, dtype=float)
    # scipy's "auto": the exact distribution for tiny samples without ties, else the normal
    # approximation with tie correction (fast on 20k x 20k).
    res = mannwhitneyu(a, b, alternative="greater", method="auto")
    u = float(res.statistic)
    p = float(res.pvalue)
    cl = u / (len(a) * len(b))
    return MannWhitney(u=u, p_value=p, common_language=cl, rank_biserial=2.0 * cl - 1.0)


def compare_latency(
    primary: Sequence[float],
    canary: Sequence[float],
    *,
    percentiles: tuple[float, float, float, float] | None = None,
) -> LatencyComparison:
    """Test and summarise two latency samples.

    ``percentiles`` (primary p50, primary p99, canary p50, canary p99) may come from the
    database (``percentile_cont`` over the same sample); otherwise they are computed here with
    the same linear interpolation.
    """
    test = mann_whitney_greater(canary, primary)
    if percentiles is None:
        pp = np.percentile(np.asarray(primary, dtype=float), [50, 99])
        cp = np.percentile(np.asarray(canary, dtype=float), [50, 99])
        percentiles = (float(pp[0]), float(pp[1]), float(cp[0]), float(cp[1]))
    return LatencyComparison(
        n_primary=len(primary),
        n_canary=len(canary),
        test=test,
        primary_p50=percentiles[0],
        primary_p99=percentiles[1],
        canary_p50=percentiles[2],
        canary_p99=percentiles[3],
    )
