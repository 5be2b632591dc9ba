"""Formatting shared by the terminal and the HTML report: numbers, rates, durations, sizes,
times and JSON values as short text, and the cells of the endpoint and runtime rows.

Every function returns plain text (no markup); the HTML renderer escapes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from diff.report_model import Report
from graygate.values import Check, EndpointStats
from store.reports import RunOverview, RuntimeSummary

__all__ = [
    "RUNTIME_HEADERS",
    "STRICT_COLUMN",
    "VALUE_WIDTH",
    "byte_size",
    "check_mark",
    "check_values",
    "delta_ms",
    "endpoint_cells",
    "format_value",
    "fraction_of",
    "ms",
    "ms_unit",
    "num",
    "pct",
    "runtime_cells",
    "runtime_check_rows",
    "share",
    "summary_line",
    "versions",
    "when",
]

VALUE_WIDTH = 80


def format_value(value: Any, width: int = VALUE_WIDTH) -> str:
    """A JSON value as compact JSON text, cut to ``width`` characters."""
    if value is None:
        return "null"
    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def num(value: Any) -> str:
    """A number (or a dict or list of them, or a bool) as short text; ``—`` for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={num(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list | tuple):
        return ", ".join(num(v) for v in value)
    return str(value)


def pct(value: float | None) -> str:
    """A fraction as a percentage with 3 significant digits: 0.0123 -> ``1.23%``."""
    if value is None:
        return "—"
    if value == 0:
        return "0%"
    return f"{value * 100:.3g}%"


def ms(value: float | None) -> str:
    """Milliseconds: two decimals under 10, one above."""
    if value is None:
        return "—"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def byte_size(value: int | None) -> str:
    """A size in B, KiB, MiB or GiB."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)  # pragma: no cover


def when(value: datetime | str | None) -> str:
    """A time (or its ISO text) in UTC to the second; naive times are taken as UTC."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        when = value
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_mark(check: Check) -> str:
    """``pass``, ``FAIL`` or ``n/a`` for a verdict check."""
    return {True: "pass", False: "FAIL", None: "n/a"}[check.passed]


def versions(run: RunOverview) -> str:
    """``primary → canary`` by version, else by URL."""
    primary = run.primary_version or run.primary_url or "primary"
    canary = run.canary_version or run.canary_url or "canary"
    return f"{primary} → {canary}"


def summary_line(report: Report) -> str:
    """How many exchanges, judged, pairs and (when any) not recorded."""
    run = report.run
    lost = sum(run.losses.values())
    parts = [
        f"{run.exchanges} exchanges",
        f"{run.judged} judged",
        f"{sum(e.pairs for e in report.endpoints)} pairs",
    ]
    if lost:
        parts.append(f"{lost} not recorded")
    return ", ".join(parts)


STRICT_COLUMN = 8  # in endpoint_cells: shown in red when there is a strict mismatch


def endpoint_cells(e: EndpointStats) -> tuple[str, ...]:
    """One endpoint row as plain text, for the terminal and (escaped) for HTML."""
    return (
        e.endpoint,
        str(e.pairs),
        str(e.match),
        str(e.differ),
        str(e.noise_only),
        str(e.skipped),
        str(e.error),
        str(e.pending),
        f"{e.strict_mismatches} ({pct(e.strict_mismatch_rate)})",
        f"{e.tolerance_violations} ({pct(e.tolerance_violation_rate)})",
        str(e.noise),
        f"{ms(e.primary_p50_ms)} / {ms(e.primary_p99_ms)}",
        f"{ms(e.canary_p50_ms)} / {ms(e.canary_p99_ms)}",
    )


RUNTIME_HEADERS = (
    "side",
    "samples",
    "goroutines first → last (max)",
    "heap first → last (max)",
    "GC cycles",
    "GC pause p99 / max ms",
    "GC CPU max",
)


def runtime_cells(r: RuntimeSummary) -> tuple[str, ...]:
    """One runtime row as plain text, for the terminal and (escaped) for HTML."""
    return (
        r.role,
        f"{r.samples}" + (f" ({r.failed_samples} failed)" if r.failed_samples else ""),
        f"{num(r.goroutines_first)} → {num(r.goroutines_last)} ({num(r.goroutines_max)})",
        f"{byte_size(r.heap_alloc_first)} → {byte_size(r.heap_alloc_last)} "
        f"({byte_size(r.heap_alloc_max)})",
        num(r.gc_cycles),
        f"{ms(r.gc_pause_p99_ms)} / {ms(r.gc_pause_max_ms)}",
        pct(r.gc_cpu_fraction_max),
    )


def share(count: int, total: int | None, of: str = "pairs") -> str:
    """``count (78% of pairs)``; the count alone when there is no total."""
    if not total:
        return str(count)
    return f"{count} ({pct(count / total)} of {of})"


def fraction_of(value: float | None, of: str = "pairs") -> str:
    """A fraction with its meaning: 0.78 -> ``0.78 (78% of pairs)``."""
    if value is None:
        return "—"
    return f"{value:.3g} ({pct(value)} of {of})"


def ms_unit(value: float | None) -> str:
    """Milliseconds with the unit: ``3.2 ms``."""
    return "—" if value is None else f"{ms(value)} ms"


def delta_ms(value: float | None) -> str:
    """A difference in milliseconds, signed: ``+3.2 ms``."""
    if value is None:
        return "—"
    return f"{'+' if value >= 0 else '-'}{ms(abs(value))} ms"


# What a check's rate is a share of (its observed and threshold are fractions of it).
_RATE_OF = {
    "strict": "pairs",
    "tolerance": "pairs",
    "recording": "exchanges",
    "backlog": "recorded",
    "judgeable": "compared",
}


def _signed_pct(value: float) -> str:
    return ("+" if value >= 0 else "-") + pct(abs(value))


def check_values(check: Check) -> tuple[str, str]:
    """A check's observed value and threshold as text with units ("0.286 (28.6% of pairs)",
    "+12% p50"), never a bare float; the runtime check's are summarised (its figures are
    :func:`runtime_check_rows`)."""
    obs, thr = check.observed, check.threshold
    name = check.name
    if name in _RATE_OF:
        of = _RATE_OF[name]
        o = fraction_of(obs, of) if isinstance(obs, int | float) else num(obs)
        t = f"≤ {fraction_of(thr, of)}" if isinstance(thr, int | float) else num(thr)
        return o, t
    if name == "evidence" and isinstance(thr, Mapping):
        t = f"≥ {thr.get('min_pairs')} pairs, ≥ {thr.get('min_pairs_per_endpoint')} per endpoint"
        return (f"{obs} pairs" if obs is not None else "—"), t
    if name == "errors":
        o = f"{_signed_pct(obs)} of attempted" if isinstance(obs, int | float) else num(obs)
        t = f"≤ {_signed_pct(thr)}" if isinstance(thr, int | float) else num(thr)
        return o, t
    if name == "latency":
        o = f"{_signed_pct(obs)} (slowest endpoint)" if isinstance(obs, int | float) else "—"
        if isinstance(thr, Mapping):
            t = (
                f"≤ {_signed_pct(float(thr.get('max_increase') or 0))}, "
                f"significant at p < {num(thr.get('alpha'))}"
            )
        else:
            t = num(thr)
        return o, t
    if name == "noise":
        return (f"{obs} field(s)" if obs is not None else "—"), "—"
    if name == "runtime" and isinstance(obs, Mapping):
        limit = thr.get("pause_p99_ms") if isinstance(thr, Mapping) else None
        return (
            f"GC pause p99 {ms_unit(obs.get('pause_p99_ms'))}, "
            f"{obs.get('goroutines') if obs.get('goroutines') is not None else '—'} goroutines",
            f"GC pause p99 ≤ {ms_unit(limit)}" if limit is not None else "per figure, below",
        )
    return num(obs), num(thr)


def _growth(value: Any) -> str:
    return _signed_pct(float(value)) if isinstance(value, int | float) else "—"


def runtime_check_rows(check: Check) -> list[tuple[str, str, str]]:
    """The runtime check as rows of (figure, observed, limit), with units."""
    obs = check.observed if isinstance(check.observed, Mapping) else {}
    thr = check.threshold if isinstance(check.threshold, Mapping) else {}
    if not obs or not obs.get("samples"):
        return []  # no sample taken: nothing to tabulate (the detail says why)
    base = obs.get("baseline")
    if isinstance(base, Mapping):
        baseline = (
            f"{base.get('source')}: mean {ms_unit(base.get('mean_ms'))} ± "
            f"{ms_unit(base.get('sigma_ms'))} ({base.get('pauses')} pauses)"
        )
    else:
        baseline = "none"
    samples = f"{obs.get('samples', 0)} ({obs.get('errors', 0)} failed)"
    cpu = obs.get("gc_cpu_fraction")
    return [
        ("samples", samples, "—"),
        ("GC pauses", f"{obs.get('pauses', 0)} ({obs.get('pauses_lost', 0)} not seen)", "—"),
        ("GC pause baseline", baseline, "threshold 2 x mean + 3 sigma"),
        (
            "GC pause p99 (run / worst window)",
            f"{ms_unit(obs.get('pause_p99_ms'))} / {ms_unit(obs.get('worst_window_p99_ms'))}",
            f"≤ {ms_unit(thr.get('pause_p99_ms'))}",
        ),
        (
            "failing windows (in a row; in all)",
            f"{obs.get('max_consecutive_failing_windows', 0)}; "
            f"{obs.get('failing_windows', 0)} of {obs.get('windows', 0)}",
            f"< {thr.get('failing_windows', '—')} in a row; in all too while the run's p99 is over",
        ),
        (
            "goroutines (growth, rising windows)",
            f"{num(obs.get('goroutines'))} ({_growth(obs.get('goroutine_growth'))}, "
            f"{obs.get('goroutine_rising_windows') or '—'})",
            f"≤ {_growth(thr.get('max_goroutine_growth'))}",
        ),
        (
            "heap growth",
            _growth(obs.get("heap_growth")),
            f"≤ {_growth(thr.get('max_heap_growth'))}",
        ),
        (
            "GC CPU",
            pct(cpu) if isinstance(cpu, int | float) else "—",
            f"≤ {pct(thr['max_gc_cpu_fraction'])}"
            if isinstance(thr.get("max_gc_cpu_fraction"), int | float)
            else "—",
        ),
    ]
