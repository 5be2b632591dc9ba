"""The canary's Go runtime health: parsing runtime figures and the ``runtime`` check.

Pure: text and numbers in, plain values out; no aiohttp, no database.

Sources (a Go service exposes one or both):

- expvar JSON (``/debug/vars``): ``memstats`` is Go's ``runtime.MemStats`` with the
  ``PauseNs`` ring of the last 256 stop-the-world pause durations (the pause of GC number
  ``n``, counted from 1, sits at index ``(n + 255) % 256``, so the latest one at
  ``(NumGC + 255) % 256``); a ``goroutines`` variable, when the service publishes one;
- Prometheus text from the Go client library: ``go_goroutines``, ``go_memstats_*`` and the
  ``go_gc_duration_seconds`` summary. The summary has no single pauses, only their count
  and sum, so the pauses between two scrapes are approximated by their mean.

The sampler turns two consecutive readings into the pauses that ended between them
(:func:`with_new_pauses`); :func:`runtime_check` judges a run's samples in windows of
``runtime.window_s`` seconds:

- GC pauses: a window fails when its p99 pause exceeds the baseline's threshold; the check
  fails after ``failing_windows`` consecutive failing windows (windows without a collection
  carry no evidence and are skipped), or when ``failing_windows`` windows fail anywhere in
  the run and the p99 of all the run's pauses is over the threshold too (a canary over its
  budget every other window is not healthy; one burst, however long ago, is not enough).
  Latest windows over the threshold that do not fail it yet, or a whole run over it in too
  few windows, leave the check undecided (``observed["gc_pending"]``): never a pass.
  The baseline is, in this order: the configured ``gc_pause_budget_ms`` (the threshold
  itself), the primary's own pauses when the primary is a Go service too, or the canary's
  pauses in an earlier run that got GO; from measured pauses the threshold is
  ``2 * mean + 3 * sigma``.
- Goroutines: after the first (warm-up) window, a leak is growth of at least
  :data:`MIN_GOROUTINE_GROWTH` goroutines that rises steadily (the window medians rise in
  at least :data:`RISING_FRACTION` of the steps) and is either

  - large: the Theil-Sen trend over the observed span exceeds ``max_goroutine_growth``
    relative to the starting level; or
  - a trend: a slope significantly above zero (Mann-Kendall, i.e. Kendall's tau of value
    against time, one-sided p < :data:`TREND_ALPHA`) over the whole span *and* in each
    half of it (a rise that keeps going, not one step up), of at least
    :data:`TREND_MIN_SHARE` of the bound. A short run cannot reach the total growth the
    bound asks for; a leak that rises in every window is still a leak.

  A flat or noisy count, or one step up when load starts, passes.
- Heap growth (same trend, on heap in use) and the GC CPU fraction are reported, and fail
  only when ``max_heap_growth`` / ``max_gc_cpu_fraction`` are configured (the heap by the
  same two rules, with ``max_heap_growth`` as the bound and no absolute floor).

With no figures at all the check is undecided (``passed=None``, detail "no data"); it is
``blocking`` only when ``runtime.required`` is set, so an absent runtime source makes the
verdict INCONCLUSIVE when required and is ignored otherwise.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from prometheus_client.parser import text_string_to_metric_families

from config.schema import RuntimeConfig
from graygate.values import Check

if TYPE_CHECKING:  # store owns what a sample holds; imported for types only, so no database here
    from store.runtime_samples import SampleValues

__all__ = [
    "MIN_BASELINE_PAUSES",
    "MIN_GOROUTINE_GROWTH",
    "MIN_TREND_WINDOWS",
    "PAUSE_RING",
    "RISING_FRACTION",
    "TREND_ALPHA",
    "TREND_MIN_SHARE",
    "Baseline",
    "RuntimeAnalysis",
    "RuntimeParseError",
    "RuntimeSample",
    "Trend",
    "WindowStats",
    "analyse",
    "baseline_from_pauses",
    "baseline_from_samples",
    "choose_baseline",
    "is_leak",
    "mann_kendall_p",
    "merge",
    "new_pauses",
    "parse_expvar",
    "parse_prometheus",
    "percentile",
    "runtime_check",
    "theil_sen",
    "trend",
    "with_new_pauses",
]

PAUSE_RING = 256  # len(runtime.MemStats.PauseNs)
MIN_BASELINE_PAUSES = 10  # fewer measured pauses make no baseline
MIN_TREND_WINDOWS = 3  # windows after warm-up needed to judge a trend
MIN_GOROUTINE_GROWTH = 10  # absolute goroutines: below this, growth is never a leak
RISING_FRACTION = 0.6  # share of window-to-window steps that must rise for a leak
TREND_ALPHA = 0.01  # one-sided Mann-Kendall p below this: the slope is above zero
TREND_MIN_SHARE = 0.2  # a significant trend is a leak from this share of the growth bound
_MIN_HALF_POINTS = 4  # fewer points in a half: its trend cannot be significant
_MAX_TREND_POINTS = 400  # Theil-Sen is O(n^2): longer series are thinned evenly


class RuntimeParseError(ValueError):
    """A runtime source answered something that is not expvar JSON / Prometheus text."""


@dataclass(frozen=True, slots=True)
class RuntimeSample:
    """One reading of a service's runtime, or the error in place of one.

    ``pauses_ns`` are the GC pauses that ended since the previous reading (empty on the
    first). ``pause_ring`` (expvar) and ``pause_total_ns`` (Prometheus) are what the next
    reading's pauses are computed from; they are not stored.
    """

    taken_at: datetime
    source: str  # expvar | prometheus
    goroutines: int | None = None
    heap_alloc: int | None = None
    heap_inuse: int | None = None
    num_gc: int | None = None
    gc_cpu_fraction: float | None = None
    pauses_ns: tuple[int, ...] = ()
    error: str | None = None
    pauses_lost: int = 0  # collections between the readings whose pause is not known
    pause_ring: tuple[int, ...] | None = field(default=None, repr=False, compare=False)
    pause_total_ns: int | None = field(default=None, repr=False, compare=False)

    @classmethod
    def failed(cls, taken_at: datetime, source: str, error: str) -> RuntimeSample:
        return cls(taken_at=taken_at, source=source, error=error)


# --------------------------------------------------------------------------- parsing


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def parse_expvar(body: bytes | str | Mapping[str, Any], *, taken_at: datetime) -> RuntimeSample:
    """A sample from Go's expvar JSON (``memstats`` and, when published, ``goroutines``)."""
    if isinstance(body, Mapping):
        doc: Any = body
    else:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RuntimeParseError(f"expvar: not JSON: {exc}") from None
    if not isinstance(doc, Mapping):
        raise RuntimeParseError("expvar: expected a JSON object")
    mem = doc.get("memstats")
    goroutines = _int(doc.get("goroutines"))
    if not isinstance(mem, Mapping):
        if goroutines is None:
            raise RuntimeParseError("expvar: neither memstats nor goroutines in the document")
        mem = {}
    ring_raw = mem.get("PauseNs")
    ring: tuple[int, ...] | None = None
    if isinstance(ring_raw, list) and len(ring_raw) == PAUSE_RING:
        ring = tuple(_int(v) or 0 for v in ring_raw)
    return RuntimeSample(
        taken_at=taken_at,
        source="expvar",
        goroutines=goroutines,
        heap_alloc=_int(mem.get("HeapAlloc")),
        heap_inuse=_int(mem.get("HeapInuse")),
        num_gc=_int(mem.get("NumGC")),
        gc_cpu_fraction=_float(mem.get("GCCPUFraction")),
        pause_ring=ring,
        pause_total_ns=_int(mem.get("PauseTotalNs")),
    )


def parse_prometheus(text: str, *, taken_at: datetime) -> RuntimeSample:
    """A sample from the Go Prometheus client's text exposition format."""
    values: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                # The go_* figures carry no labels; the summary's quantiles (labelled) are
                # over the last collections, not the new ones, and are not used.
                if not s.labels:
                    values[s.name] = float(s.value)
    except (ValueError, TypeError, IndexError) as exc:
        raise RuntimeParseError(f"prometheus: cannot parse the text format: {exc}") from None
    known = ("go_goroutines", "go_gc_duration_seconds_count", "go_memstats_heap_alloc_bytes")
    if not any(k in values for k in known):
        raise RuntimeParseError("prometheus: no go_goroutines, go_gc_* or go_memstats_* metrics")

    def geti(name: str) -> int | None:
        v = values.get(name)
        return None if v is None or not math.isfinite(v) else int(v)

    total_s = values.get("go_gc_duration_seconds_sum")
    return RuntimeSample(
        taken_at=taken_at,
        source="prometheus",
        goroutines=geti("go_goroutines"),
        heap_alloc=geti("go_memstats_heap_alloc_bytes"),
        heap_inuse=geti("go_memstats_heap_inuse_bytes"),
        num_gc=geti("go_gc_duration_seconds_count"),
        gc_cpu_fraction=values.get("go_memstats_gc_cpu_fraction"),
        pause_total_ns=None if total_s is None else round(total_s * 1e9),
    )


def merge(first: RuntimeSample, fallback: RuntimeSample) -> RuntimeSample:
    """``first`` with the figures it lacks taken from ``fallback`` (e.g. goroutines from
    Prometheus when expvar publishes none). Pause data stays ``first``'s."""
    return replace(
        first,
        goroutines=first.goroutines if first.goroutines is not None else fallback.goroutines,
        heap_alloc=first.heap_alloc if first.heap_alloc is not None else fallback.heap_alloc,
        heap_inuse=first.heap_inuse if first.heap_inuse is not None else fallback.heap_inuse,
        gc_cpu_fraction=(
            first.gc_cpu_fraction if first.gc_cpu_fraction is not None else fallback.gc_cpu_fraction
        ),
    )


# --------------------------------------------------------------------------- pauses


def new_pauses(
    ring: Sequence[int], prev_num_gc: int | None, num_gc: int
) -> tuple[tuple[int, ...], int]:
    """The pauses of the collections after ``prev_num_gc`` up to ``num_gc``, oldest first,
    and how many of them the ring no longer holds.

    ``prev_num_gc`` None (no earlier reading) gives no pauses: they ended before sampling
    began. A count that went down means the process restarted: every collection since
    the restart is new.
    """
    if len(ring) != PAUSE_RING:
        raise ValueError(f"the pause ring has {len(ring)} entries, expected {PAUSE_RING}")
    if prev_num_gc is None:
        return (), 0
    if num_gc < prev_num_gc:
        prev_num_gc = 0  # restarted
    n = num_gc - prev_num_gc
    kept = min(n, PAUSE_RING)
    # Collection number i (from 1) is at index (i + 255) % 256 == (i - 1) % 256.
    pauses = tuple(ring[(i - 1) % PAUSE_RING] for i in range(num_gc - kept + 1, num_gc + 1))
    return pauses, n - kept


def with_new_pauses(prev: RuntimeSample | None, cur: RuntimeSample) -> RuntimeSample:
    """``cur`` with ``pauses_ns`` / ``pauses_lost``: the collections since ``prev``.

    ``prev`` is the last successful reading of the same source (None for the first).
    """
    if cur.error is not None or cur.num_gc is None:
        return cur
    prev_gc = None if prev is None or prev.error is not None else prev.num_gc
    if cur.pause_ring is not None:
        pauses, lost = new_pauses(cur.pause_ring, prev_gc, cur.num_gc)
        return replace(cur, pauses_ns=pauses, pauses_lost=lost)
    # Prometheus: only the count and the sum; n pauses of their mean.
    if prev_gc is None or prev is None:
        return cur
    restarted = cur.num_gc < prev_gc
    n = cur.num_gc if restarted else cur.num_gc - prev_gc
    if n <= 0 or cur.pause_total_ns is None:
        return replace(cur, pauses_lost=max(n, 0))
    prev_total = 0 if restarted else (prev.pause_total_ns or 0)
    mean = max(0, cur.pause_total_ns - prev_total) / n
    kept = min(n, PAUSE_RING)
    return replace(cur, pauses_ns=(round(mean),) * kept, pauses_lost=n - kept)


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear interpolation between order statistics."""
    if not values:
        raise ValueError("percentile of no values")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def theil_sen(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Theil-Sen estimate ``(slope, intercept)``: the median of pairwise slopes, robust to
    outliers. Series longer than a few hundred points are thinned evenly first."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    n = len(xs)
    if n == 0:
        raise ValueError("theil_sen of no points")
    if n > _MAX_TREND_POINTS:
        idx = [round(i * (n - 1) / (_MAX_TREND_POINTS - 1)) for i in range(_MAX_TREND_POINTS)]
        xs, ys = [xs[i] for i in idx], [ys[i] for i in idx]
        n = len(xs)
    slopes = [
        (ys[j] - ys[i]) / (xs[j] - xs[i])
        for i in range(n)
        for j in range(i + 1, n)
        if xs[j] != xs[i]
    ]
    slope = statistics.median(slopes) if slopes else 0.0
    intercept = statistics.median(y - slope * x for x, y in zip(xs, ys, strict=True))
    return slope, intercept


@dataclass(frozen=True, slots=True)
class Trend:
    """A series' robust trend after warm-up, and how steadily its windows rise."""

    points: int
    windows: int
    span_s: float
    slope_per_s: float
    start: float  # fitted level at the first point
    growth: float  # slope * span: absolute
    relative: float  # growth / max(start, 1)
    rising: int  # window-to-window steps whose median rose
    steps: int
    p_value: float = 1.0  # one-sided Mann-Kendall: is the slope above zero?
    p_halves: tuple[float, float] = (1.0, 1.0)  # the same, in each half of the span

    @property
    def rising_fraction(self) -> float:
        return self.rising / self.steps if self.steps else 0.0

    @property
    def significant(self) -> bool:
        """Rising over the whole span and in each half of it (not one step up)."""
        return self.p_value < TREND_ALPHA and max(self.p_halves) < TREND_ALPHA


def mann_kendall_p(xs: Sequence[float], ys: Sequence[float]) -> float:
    """One-sided p-value of the Mann-Kendall test that ``ys`` rises with ``xs`` (Kendall's
    tau-b of value against time, ties accounted for); 1.0 when it cannot tell (fewer than
    :data:`_MIN_HALF_POINTS` points, or a constant series)."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    if len(xs) < _MIN_HALF_POINTS:
        return 1.0
    from scipy.stats import kendalltau  # scipy.stats takes ~1 s to import: only when used

    p = float(kendalltau(xs, ys, alternative="greater").pvalue)
    return p if math.isfinite(p) else 1.0


def trend(points: Sequence[tuple[float, int, float]]) -> Trend | None:
    """The trend of ``(seconds, window index, value)`` points; None without two points."""
    if len(points) < 2:
        return None
    xs = [p[0] for p in points]
    ys = [p[2] for p in points]
    slope, intercept = theil_sen(xs, ys)
    span = xs[-1] - xs[0]
    start = intercept + slope * xs[0]
    growth = slope * span
    by_window: dict[int, list[float]] = {}
    for _, w, v in points:
        by_window.setdefault(w, []).append(v)
    medians = [statistics.median(by_window[w]) for w in sorted(by_window)]
    rising = sum(1 for a, b in itertools.pairwise(medians) if b > a)
    mid = xs[0] + span / 2.0
    first = [(x, y) for x, y in zip(xs, ys, strict=True) if x <= mid]
    second = [(x, y) for x, y in zip(xs, ys, strict=True) if x > mid]
    return Trend(
        points=len(points),
        windows=len(medians),
        span_s=span,
        slope_per_s=slope,
        start=start,
        growth=growth,
        relative=growth / max(start, 1.0),
        rising=rising,
        steps=len(medians) - 1,
        p_value=mann_kendall_p(xs, ys),
        p_halves=(
            mann_kendall_p([p[0] for p in first], [p[1] for p in first]),
            mann_kendall_p([p[0] for p in second], [p[1] for p in second]),
        ),
    )


def is_leak(t: Trend, bound: float, *, min_growth: float) -> str | None:
    """Why the trend ``t`` is a leak (``"growth"`` or ``"trend"``), or None when it is not.

    Both need at least ``min_growth`` absolute growth and window medians rising in at least
    :data:`RISING_FRACTION` of the steps; then ``growth``: relative growth above ``bound``;
    ``trend``: a significant slope (:attr:`Trend.significant`) with relative growth of at
    least :data:`TREND_MIN_SHARE` of ``bound``.
    """
    if t.growth < min_growth or t.rising_fraction < RISING_FRACTION:
        return None
    if t.relative > bound:
        return "growth"
    if t.significant and t.relative >= TREND_MIN_SHARE * bound:
        return "trend"
    return None


# --------------------------------------------------------------------------- baseline


@dataclass(frozen=True, slots=True)
class Baseline:
    """What the canary's GC pauses are measured against.

    ``source`` is ``budget`` (the configured ``gc_pause_budget_ms``: the threshold
    itself), ``primary`` (the primary's pauses in this run) or ``previous_run`` (the
    canary's pauses in an earlier run that got GO).
    """

    source: str
    mean_ms: float
    sigma_ms: float = 0.0
    pauses: int = 0
    run_id: int | None = None  # previous_run: which run

    @property
    def threshold_ms(self) -> float:
        if self.source == "budget":
            return self.mean_ms
        return 2.0 * self.mean_ms + 3.0 * self.sigma_ms

    @classmethod
    def budget(cls, budget_ms: float) -> Baseline:
        return cls(source="budget", mean_ms=budget_ms)

    @classmethod
    def from_ns(
        cls,
        source: str,
        count: int,
        mean_ns: float,
        sigma_ns: float | None,
        *,
        run_id: int | None = None,
    ) -> Baseline | None:
        """From aggregate figures (e.g. SQL ``avg``/``stddev_samp``); None when fewer than
        :data:`MIN_BASELINE_PAUSES` pauses were measured."""
        if count < MIN_BASELINE_PAUSES:
            return None
        return cls(
            source=source,
            mean_ms=mean_ns / 1e6,
            sigma_ms=(sigma_ns or 0.0) / 1e6,
            pauses=count,
            run_id=run_id,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "mean_ms": round(self.mean_ms, 4),
            "sigma_ms": round(self.sigma_ms, 4),
            "threshold_ms": round(self.threshold_ms, 4),
            "pauses": self.pauses,
            "run_id": self.run_id,
        }


def baseline_from_pauses(
    pauses_ns: Sequence[int], source: str, *, run_id: int | None = None
) -> Baseline | None:
    """A baseline from single pauses; None when there are too few."""
    n = len(pauses_ns)
    if n < MIN_BASELINE_PAUSES:
        return None
    mean = statistics.fmean(pauses_ns)
    sigma = statistics.stdev(pauses_ns) if n > 1 else 0.0
    return Baseline.from_ns(source, n, mean, sigma, run_id=run_id)


def baseline_from_samples(
    samples: Sequence[SampleValues], source: str = "primary"
) -> Baseline | None:
    """A baseline from a service's samples (e.g. the primary's, when it is a Go service)."""
    return baseline_from_pauses(
        [p for s in samples if s.error is None for p in s.pauses_ns], source
    )


def choose_baseline(
    cfg: RuntimeConfig, *, primary: Baseline | None, previous: Baseline | None
) -> Baseline | None:
    """The baseline :func:`runtime_check` should get, by precedence: a configured budget
    (which :func:`runtime_check` applies itself), the primary's figures when
    ``runtime.primary`` is configured, then an earlier passing run's."""
    if cfg.gc_pause_budget_ms is not None:
        return Baseline.budget(cfg.gc_pause_budget_ms)
    if cfg.primary is not None and primary is not None:
        return primary
    return previous


# --------------------------------------------------------------------------- analysis


@dataclass(frozen=True, slots=True)
class WindowStats:
    index: int
    samples: int
    errors: int
    pauses: int
    p99_ms: float | None
    goroutines: float | None  # median
    heap_inuse: float | None  # median
    failed: bool | None  # None: no pauses (no evidence) or no baseline


@dataclass(frozen=True, slots=True)
class RuntimeAnalysis:
    samples: int
    errors: int
    windows: tuple[WindowStats, ...]
    baseline: Baseline | None
    pauses: int
    pauses_lost: int
    pause_mean_ms: float | None
    pause_sigma_ms: float | None
    pause_p99_ms: float | None
    failing_windows: int  # in all
    max_consecutive_failing: int
    failing_run: tuple[int, int] | None  # first and last window index of the longest run
    goroutines: Trend | None
    heap: Trend | None
    gc_cpu_fraction: float | None  # the latest (Go's figure is cumulative)
    last_goroutines: int | None


def _ts(dt: datetime) -> float:
    return dt.timestamp()


def analyse(
    samples: Sequence[SampleValues], cfg: RuntimeConfig, *, baseline: Baseline | None
) -> RuntimeAnalysis:
    """Window the samples and compute every figure the check judges."""
    ordered = sorted(samples, key=lambda s: s.taken_at)
    if cfg.gc_pause_budget_ms is not None:
        baseline = Baseline.budget(cfg.gc_pause_budget_ms)
    ok = [s for s in ordered if s.error is None]
    errors = len(ordered) - len(ok)
    t0 = _ts(ordered[0].taken_at) if ordered else 0.0

    def widx(s: SampleValues) -> int:
        return int((_ts(s.taken_at) - t0) // cfg.window_s)

    grouped: dict[int, list[SampleValues]] = {}
    for s in ordered:
        grouped.setdefault(widx(s), []).append(s)

    windows: list[WindowStats] = []
    for i in sorted(grouped):
        ws = grouped[i]
        good = [s for s in ws if s.error is None]
        pauses = [p for s in good for p in s.pauses_ns]
        p99 = percentile(pauses, 99) / 1e6 if pauses else None
        gor = [s.goroutines for s in good if s.goroutines is not None]
        heap = [s.heap_inuse for s in good if s.heap_inuse is not None]
        failed: bool | None = None
        if p99 is not None and baseline is not None:
            failed = p99 > baseline.threshold_ms
        windows.append(
            WindowStats(
                index=i,
                samples=len(ws),
                errors=len(ws) - len(good),
                pauses=len(pauses),
                p99_ms=p99,
                goroutines=statistics.median(gor) if gor else None,
                heap_inuse=statistics.median(heap) if heap else None,
                failed=failed,
            )
        )

    run = longest = failing = 0
    run_start = 0
    failing_run: tuple[int, int] | None = None
    for w in windows:
        if w.failed is None:
            continue  # no collection in the window: no evidence either way
        if w.failed:
            failing += 1
            if run == 0:
                run_start = w.index
            run += 1
            if run > longest:
                longest, failing_run = run, (run_start, w.index)
        else:
            run = 0

    all_pauses = [p for s in ok for p in s.pauses_ns]
    # Collections the recorded pauses do not account for (more than the ring between two
    # polls, a restarted sampler): derived from the counts, so stored rows need no column.
    lost = 0
    prev_gc: int | None = None
    for s in ok:
        if s.num_gc is not None:
            if prev_gc is not None:
                lost += max(0, s.num_gc - prev_gc - len(s.pauses_ns))
            prev_gc = s.num_gc

    # Trends skip the first window: load ramps up, pools fill, caches warm.
    first_w = windows[0].index if windows else 0
    g_points = [
        (_ts(s.taken_at) - t0, widx(s), float(s.goroutines))
        for s in ok
        if s.goroutines is not None and widx(s) > first_w
    ]
    h_points = [
        (_ts(s.taken_at) - t0, widx(s), float(s.heap_inuse))
        for s in ok
        if s.heap_inuse is not None and widx(s) > first_w
    ]
    cpu = [s.gc_cpu_fraction for s in ok if s.gc_cpu_fraction is not None]
    gor_all = [s.goroutines for s in ok if s.goroutines is not None]
    return RuntimeAnalysis(
        samples=len(ordered),
        errors=errors,
        windows=tuple(windows),
        baseline=baseline,
        pauses=len(all_pauses),
        pauses_lost=lost,
        pause_mean_ms=statistics.fmean(all_pauses) / 1e6 if all_pauses else None,
        pause_sigma_ms=statistics.stdev(all_pauses) / 1e6 if len(all_pauses) > 1 else None,
        pause_p99_ms=percentile(all_pauses, 99) / 1e6 if all_pauses else None,
        failing_windows=failing,
        max_consecutive_failing=longest,
        failing_run=failing_run,
        goroutines=trend(g_points),
        heap=trend(h_points),
        gc_cpu_fraction=cpu[-1] if cpu else None,
        last_goroutines=gor_all[-1] if gor_all else None,
    )


# --------------------------------------------------------------------------- the check


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def _observed(a: RuntimeAnalysis) -> dict[str, Any]:
    g, h = a.goroutines, a.heap
    return {
        "samples": a.samples,
        "errors": a.errors,
        "windows": len(a.windows),
        "failing_windows": a.failing_windows,
        "max_consecutive_failing_windows": a.max_consecutive_failing,
        "failing_run_windows": list(a.failing_run) if a.failing_run else None,
        "failing_window_p99_ms": {
            str(w.index): _r(w.p99_ms) for w in a.windows if w.failed and w.p99_ms is not None
        },
        "pauses": a.pauses,
        "pauses_lost": a.pauses_lost,
        "pause_p99_ms": _r(a.pause_p99_ms),
        "worst_window_p99_ms": _r(
            max((w.p99_ms for w in a.windows if w.p99_ms is not None), default=None)
        ),
        "pause_mean_ms": _r(a.pause_mean_ms),
        "pause_sigma_ms": _r(a.pause_sigma_ms),
        "baseline": a.baseline.as_dict() if a.baseline is not None else None,
        "goroutines": a.last_goroutines,
        "goroutine_slope_per_s": _r(g.slope_per_s) if g else None,
        "goroutine_growth": _r(g.relative) if g else None,
        "goroutine_rising_windows": f"{g.rising}/{g.steps}" if g else None,
        "goroutine_trend_p": _r(g.p_value, 6) if g else None,
        "goroutine_trend_p_halves": [_r(p, 6) for p in g.p_halves] if g else None,
        "heap_growth": _r(h.relative) if h else None,
        "gc_cpu_fraction": _r(a.gc_cpu_fraction, 6),
    }


def _threshold(cfg: RuntimeConfig, a: RuntimeAnalysis) -> dict[str, Any]:
    return {
        "pause_p99_ms": _r(a.baseline.threshold_ms) if a.baseline else None,
        "failing_windows": cfg.failing_windows,
        "max_goroutine_growth": cfg.max_goroutine_growth,
        "trend_alpha": TREND_ALPHA,
        "trend_min_growth": _r(TREND_MIN_SHARE * cfg.max_goroutine_growth),
        "rising_fraction": RISING_FRACTION,
        "max_heap_growth": cfg.max_heap_growth,
        "max_gc_cpu_fraction": cfg.max_gc_cpu_fraction,
    }


def _pct(x: float) -> str:
    return f"{x * 100:+.0f}%"


def _trend_rule(bound: float) -> str:
    return (
        f"(limit: p < {TREND_ALPHA:g} over the span and each half, rising in "
        f">= {RISING_FRACTION:.0%} of windows, growth >= {_pct(TREND_MIN_SHARE * bound)}; "
        f"total-growth bound {_pct(bound)})"
    )


def runtime_check(
    samples: Sequence[SampleValues], cfg: RuntimeConfig, *, baseline: Baseline | None
) -> Check:
    """The verdict's ``runtime`` line for the canary's samples.

    ``baseline`` is the primary's or an earlier run's (see :func:`choose_baseline`); a
    configured ``gc_pause_budget_ms`` takes precedence over it.
    """
    a = analyse(samples, cfg, baseline=baseline)
    observed = _observed(a)
    threshold = _threshold(cfg, a)
    if a.samples - a.errors == 0:
        detail = "no data" if a.samples == 0 else f"no data: all {a.samples} polls failed"
        return Check("runtime", None, observed, threshold, detail, blocking=cfg.required)

    failures: list[str] = []
    notes: list[str] = []
    decided = 0
    pending_gc: str | None = None

    # GC pauses.
    judged = [w for w in a.windows if w.failed is not None]
    if a.baseline is None:
        notes.append("GC pauses not judged: no baseline (budget, Go primary or passing run)")
    elif not judged:
        notes.append("GC pauses not judged: no collection observed")
    else:
        decided += 1
        base = f"{a.baseline.threshold_ms:.3g} ms ({a.baseline.source})"
        # The run as a whole: every pause of the run, pooled.
        run_p99 = a.pause_p99_ms
        run_over = run_p99 is not None and run_p99 > a.baseline.threshold_ms
        worst = observed["worst_window_p99_ms"]
        if a.max_consecutive_failing >= cfg.failing_windows and a.failing_run is not None:
            first, last = a.failing_run
            worst_run = max(
                w.p99_ms
                for w in a.windows
                if first <= w.index <= last and w.failed and w.p99_ms is not None
            )
            failures.append(
                f"GC pause p99 above {base} in {a.max_consecutive_failing} consecutive "
                f"windows: windows {first}-{last} of {cfg.window_s:g}s "
                f"({first * cfg.window_s:g}-{(last + 1) * cfg.window_s:g}s into sampling), "
                f"worst {worst_run:.3g} ms (limit {cfg.failing_windows} windows in a row; "
                f"{a.failing_windows} of {len(judged)} failed)"
            )
        elif a.failing_windows >= cfg.failing_windows and run_over:
            # Not in a row, but neither a burst: the windows over the threshold are spread
            # over the run and weigh enough that the whole run's pause p99 is over it too.
            assert run_p99 is not None
            failures.append(
                f"GC pause p99 above {base} in {a.failing_windows} of {len(judged)} windows "
                f"(not in a row) and over the whole run: {run_p99:.3g} ms, worst window "
                f"{worst:.3g} ms (limit {cfg.failing_windows} windows in a row, or anywhere "
                f"when the whole run's p99 is over the threshold too)"
            )
        else:
            notes.append(
                f"GC pause p99 {worst:.3g} ms worst window vs {base}; "
                f"{a.failing_windows} of {len(judged)} windows over"
            )
            trailing = 0
            for w in sorted(judged, key=lambda w: w.index, reverse=True):
                if not w.failed:
                    break
                trailing += 1
            if trailing:
                # The latest windows are over the threshold and the run of them is not yet
                # long enough to fail: the next window may make it so. Not a pass.
                pending_gc = (
                    f"GC pauses over {base} in the last {trailing} window(s), "
                    f"{cfg.failing_windows} in a row fail: waiting for the next window"
                )
            elif run_over and a.failing_windows:
                # The whole run is over the threshold in fewer windows than fail it: one
                # more failing window anywhere would. Not a pass either.
                assert run_p99 is not None
                pending_gc = (
                    f"GC pause p99 over the whole run {run_p99:.3g} ms is over {base}, in "
                    f"{a.failing_windows} of {len(judged)} windows; {cfg.failing_windows} "
                    f"such windows fail: waiting for the next window"
                )
    if a.pauses_lost:
        notes.append(f"{a.pauses_lost} pauses not seen (more than {PAUSE_RING} GCs per poll)")

    # Goroutines.
    g = a.goroutines
    if g is None or g.windows < MIN_TREND_WINDOWS:
        have = 0 if g is None else g.windows
        notes.append(
            f"goroutines not judged: {have} windows after warm-up (need {MIN_TREND_WINDOWS})"
        )
    else:
        decided += 1
        leak = is_leak(g, cfg.max_goroutine_growth, min_growth=MIN_GOROUTINE_GROWTH)
        text = (
            f"goroutines {g.start:.0f} -> {g.start + g.growth:.0f} ({_pct(g.relative)}) "
            f"over {g.span_s:.0f}s, rising in {g.rising}/{g.steps} windows, "
            f"trend p={g.p_value:.2g}"
        )
        if leak == "growth":
            failures.append(f"goroutine leak: {text} (limit {_pct(cfg.max_goroutine_growth)})")
        elif leak == "trend":
            failures.append(
                f"goroutine leak by trend: {text} {_trend_rule(cfg.max_goroutine_growth)}"
            )
        else:
            notes.append(text)

    # Heap and GC CPU: judged only against configured bounds.
    h = a.heap
    if h is not None and h.windows >= MIN_TREND_WINDOWS:
        text = f"heap in use {_pct(h.relative)}"
        if cfg.max_heap_growth is not None:
            decided += 1
            leak = is_leak(h, cfg.max_heap_growth, min_growth=0.0)
            if h.relative > cfg.max_heap_growth:
                failures.append(f"{text} (limit {_pct(cfg.max_heap_growth)})")
            elif leak == "trend":
                failures.append(
                    f"heap leak by trend: {text}, rising in {h.rising}/{h.steps} windows, "
                    f"trend p={h.p_value:.2g} {_trend_rule(cfg.max_heap_growth)}"
                )
            else:
                notes.append(text)
        else:
            notes.append(text)
    if a.gc_cpu_fraction is not None:
        text = f"GC CPU {a.gc_cpu_fraction * 100:.2f}%"
        if cfg.max_gc_cpu_fraction is not None:
            decided += 1
            if a.gc_cpu_fraction > cfg.max_gc_cpu_fraction:
                failures.append(f"{text} (limit {cfg.max_gc_cpu_fraction * 100:.2f}%)")
            else:
                notes.append(text)
        else:
            notes.append(text)
    if a.errors:
        notes.append(f"{a.errors} of {a.samples} polls failed")

    observed["gc_pending"] = pending_gc is not None and not failures
    if failures:
        return Check("runtime", False, observed, threshold, "; ".join(failures + notes))
    if pending_gc is not None:
        # Evidence of a failure in the making: never a pass, whether or not the runtime
        # check is required.
        return Check("runtime", None, observed, threshold, "; ".join([pending_gc, *notes]))
    if decided == 0:
        return Check(
            "runtime",
            None,
            observed,
            threshold,
            "not enough data: " + "; ".join(notes),
            blocking=cfg.required,
        )
    return Check("runtime", True, observed, threshold, "; ".join(notes))
