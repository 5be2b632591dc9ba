"""The run report: one plain model, rendered for the terminal (rich) or as one HTML file.

``build_report`` reads the verdict and the endpoint numbers from one evaluation
(``diff.evaluate.assess_run``, not recorded: reading a report changes nothing), so the
report's rows are the verdict's numbers; the listings (top fields, runtime, preflight) from
``store.reports``.
``render_terminal`` prints it with rich; ``render_html`` returns ONE self-contained HTML
document (inline CSS, no script, no external reference), fit to attach to a ticket.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import assess_run
from graygate.values import Check, EndpointStats, PreflightFinding, Verdict, VerdictResult
from graygate.vocabulary import FAILURE_JUDGEMENTS, Judgement
from store import reports
from store.reports import (
    FieldStat,
    RunOverview,
    RuntimeSummary,
)

__all__ = [
    "FAILURE_JUDGEMENTS",
    "Report",
    "build_report",
    "format_value",
    "noise_fields_of",
    "render_html",
    "render_terminal",
]

logger = logging.getLogger(__name__)

_VERDICT_STYLE = {
    Verdict.GO: "bold white on green",
    Verdict.NO_GO: "bold white on red",
    Verdict.INCONCLUSIVE: "bold black on yellow",
}
_VALUE_WIDTH = 80


@dataclass(frozen=True, slots=True)
class Report:
    """Everything one report shows, as plain values."""

    run: RunOverview
    verdict: VerdictResult
    endpoints: list[EndpointStats]
    fields: list[FieldStat]  # strict / tolerance differences: what the canary got wrong
    noise: list[FieldStat]  # differences judged noise (they differ by nature)
    waived: list[FieldStat]  # differences accepted by a waiver
    runtime: list[RuntimeSummary]
    preflight: list[PreflightFinding]
    generated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


async def build_report(engine: AsyncEngine, run: str, *, top: int = 5) -> Report:
    """The report of ``run``, with the ``top`` most frequent differing fields per endpoint.

    Raises UnknownRun or StoreUnavailable.
    """
    overview = await reports.run_overview(engine, run)
    assessment = await assess_run(engine, run, record=False, endpoint_latency=True)
    verdict = assessment.verdict
    noise_keys = assessment.aggregates.noise_fields
    endpoints = assessment.aggregates.endpoint_stats()
    fields = await reports.top_fields(engine, run, per_endpoint=top)
    runtime = await reports.runtime_summary(engine, run)
    preflight = await reports.preflight(engine, run)

    def is_noise(f: FieldStat) -> bool:
        return f.judgement == Judgement.NOISE or (f.endpoint, f.field) in noise_keys

    return Report(
        run=overview,
        verdict=verdict,
        endpoints=endpoints,
        fields=[f for f in fields if f.judgement in FAILURE_JUDGEMENTS and not is_noise(f)],
        noise=[f for f in fields if f.judgement != Judgement.WAIVED and is_noise(f)],
        waived=[f for f in fields if f.judgement == Judgement.WAIVED],
        runtime=runtime,
        preflight=preflight,
    )


def noise_fields_of(verdict: VerdictResult) -> frozenset[tuple[str, str]]:
    """The (endpoint, field) pairs the verdict found to be noise (``extra["noise"]``: a
    list of ``{"endpoint", "field", ...}``), which its strict and tolerance checks leave out."""
    found = verdict.extra.get("noise")
    if not isinstance(found, list | tuple):
        return frozenset()
    return frozenset(
        (str(n["endpoint"]), str(n["field"]))
        for n in found
        if isinstance(n, dict) and "endpoint" in n and "field" in n
    )


# --------------------------------------------------------------------------- formatting


def format_value(value: Any, width: int = _VALUE_WIDTH) -> str:
    """A JSON value as compact JSON text, cut to ``width`` characters."""
    if value is None:
        return "null"
    try:
        text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _num(value: Any) -> str:
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
        return ", ".join(f"{k}={_num(v)}" for k, v in value.items() if v is not None)
    if isinstance(value, list | tuple):
        return ", ".join(_num(v) for v in value)
    return str(value)


def _pct(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "0%"
    return f"{value * 100:.3g}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _bytes(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)  # pragma: no cover


def _when(value: datetime | str | None) -> str:
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


def _check_mark(check: Check) -> str:
    return {True: "pass", False: "FAIL", None: "n/a"}[check.passed]


def _versions(run: RunOverview) -> str:
    primary = run.primary_version or run.primary_url or "primary"
    canary = run.canary_version or run.canary_url or "canary"
    return f"{primary} → {canary}"


def _summary_line(report: Report) -> str:
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


# --------------------------------------------------------------------------- terminal


def _checks_table(checks: Sequence[Check]) -> Table:
    table = Table(title="Checks", title_justify="left", expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("observed", overflow="fold", max_width=36)
    table.add_column("threshold", overflow="fold", max_width=36)
    table.add_column("detail", overflow="fold", ratio=1)
    for check in checks:
        style = {True: "green", False: "red" if check.blocking else "yellow", None: "yellow"}[
            check.passed
        ]
        table.add_row(
            check.name,
            Text(_check_mark(check), style=style),
            _num(check.observed),
            _num(check.threshold),
            check.detail,
        )
    return table


_STRICT_COLUMN = 8  # in _endpoint_cells: shown in red when there is a strict mismatch


def _endpoint_cells(e: EndpointStats) -> tuple[str, ...]:
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
        f"{e.strict_mismatches} ({_pct(e.strict_mismatch_rate)})",
        f"{e.tolerance_violations} ({_pct(e.tolerance_violation_rate)})",
        str(e.noise),
        f"{_ms(e.primary_p50_ms)} / {_ms(e.primary_p99_ms)}",
        f"{_ms(e.canary_p50_ms)} / {_ms(e.canary_p99_ms)}",
    )


def _endpoints_table(endpoints: Sequence[EndpointStats]) -> Table:
    table = Table(title="Endpoints", title_justify="left")
    table.add_column("endpoint", no_wrap=True)
    for name in ("pairs", "match", "differ", "noise only", "skipped", "error", "pending"):
        table.add_column(name, justify="right")
    table.add_column("strict mismatch", justify="right")
    table.add_column("tolerance viol.", justify="right")
    table.add_column("noise", justify="right")
    table.add_column("primary p50/p99 ms", justify="right")
    table.add_column("canary p50/p99 ms", justify="right")
    for e in endpoints:
        cells: list[str | Text] = list(_endpoint_cells(e))
        if e.strict_mismatches:
            cells[_STRICT_COLUMN] = Text(str(cells[_STRICT_COLUMN]), style="red")
        table.add_row(*cells)
    return table


def _fields_table(title: str, fields: Sequence[FieldStat]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("endpoint", overflow="fold")
    table.add_column("field", overflow="fold")
    table.add_column("judged", no_wrap=True)
    table.add_column("exchanges", justify="right")
    table.add_column("example (trace id: primary → canary)", overflow="fold")
    for f in fields:
        example = f.example
        table.add_row(
            f.endpoint,
            f.field,
            f.judgement,
            str(f.exchanges),
            f"{example.trace_id} at {example.path} ({example.kind}): "
            f"{format_value(example.primary_value, 40)} → "
            f"{format_value(example.other_value, 40)}",
        )
    return table


_RUNTIME_HEADERS = (
    "side",
    "samples",
    "goroutines first → last (max)",
    "heap first → last (max)",
    "GC cycles",
    "GC pause p99 / max ms",
    "GC CPU max",
)


def _runtime_cells(r: RuntimeSummary) -> tuple[str, ...]:
    """One runtime row as plain text, for the terminal and (escaped) for HTML."""
    return (
        r.role,
        f"{r.samples}" + (f" ({r.failed_samples} failed)" if r.failed_samples else ""),
        f"{_num(r.goroutines_first)} → {_num(r.goroutines_last)} ({_num(r.goroutines_max)})",
        f"{_bytes(r.heap_alloc_first)} → {_bytes(r.heap_alloc_last)} ({_bytes(r.heap_alloc_max)})",
        _num(r.gc_cycles),
        f"{_ms(r.gc_pause_p99_ms)} / {_ms(r.gc_pause_max_ms)}",
        _pct(r.gc_cpu_fraction_max),
    )


def _runtime_table(runtime: Sequence[RuntimeSummary]) -> Table:
    table = Table(title="Runtime", title_justify="left")
    for name in _RUNTIME_HEADERS:
        table.add_column(name, justify="right" if name != "side" else "left")
    for r in runtime:
        table.add_row(*_runtime_cells(r))
    return table


def _preflight_table(findings: Sequence[PreflightFinding]) -> Table:
    table = Table(title="Preflight", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for f in findings:
        table.add_row(
            f.check, Text("ok" if f.ok else "FAIL", style="green" if f.ok else "red"), f.detail
        )
    return table


def render_terminal(report: Report, console: Console) -> None:
    """Print the report: verdict and checks, endpoints, top fields, noise, runtime, preflight."""
    run = report.run
    verdict = report.verdict
    head = Text.assemble(
        (f" {verdict.verdict.value} ", _VERDICT_STYLE[verdict.verdict]),
        "  run ",
        (run.name, "bold"),
        f"  {_versions(run)}\n",
        f"{_summary_line(report)}; verdict computed {_when(verdict.computed_at)}",
    )
    console.print(Panel(head, title="graygate report", title_align="left", expand=False))
    console.print(_checks_table(verdict.checks))
    if report.endpoints:
        console.print(_endpoints_table(report.endpoints))
    else:
        console.print("No exchanges recorded yet.")
    if report.fields:
        console.print(_fields_table("Top differing fields", report.fields))
    else:
        console.print(Text("No strict or tolerance differences.", style="green"))
    accepted: list[Any] = []
    if report.noise:
        accepted.append(_fields_table("Noise (differs by nature; not counted)", report.noise))
    if report.waived:
        accepted.append(_fields_table("Waived (accepted differences)", report.waived))
    if accepted:
        console.print(Group(*accepted))
    if report.runtime:
        console.print(_runtime_table(report.runtime))
    if report.preflight:
        console.print(_preflight_table(report.preflight))
    if run.losses:
        console.print(
            "Not recorded: " + ", ".join(f"{k} {v}" for k, v in sorted(run.losses.items()))
        )


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { --go: #1a7f37; --nogo: #cf222e; --inc: #9a6700; --muted: #57606a; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328;
       margin: 0; background: #f6f8fa; }
main { max-width: 1280px; margin: 0 auto; padding: 24px; }
h1 { font-size: 20px; margin: 0 0 4px; }
h2 { font-size: 16px; margin: 28px 0 8px; }
p.meta { color: var(--muted); margin: 0; }
.banner { border-radius: 8px; padding: 16px 20px; color: #fff; display: flex; gap: 20px;
          align-items: center; margin: 16px 0; }
.banner .v { font-size: 28px; font-weight: 700; letter-spacing: .5px; white-space: nowrap; }
.banner.GO { background: var(--go); } .banner.NO_GO { background: var(--nogo); }
.banner.INCONCLUSIVE { background: #d4a72c; color: #1f2328; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line);
        border-radius: 6px; overflow: hidden; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th { background: #eef1f4; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr:last-child td { border-bottom: 0; }
code, .mono { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
              overflow-wrap: anywhere; }
td:first-child code { white-space: nowrap; }
table.checks td:nth-child(3), table.checks td:nth-child(4) { max-width: 240px; }
table.checks td:nth-child(5) { min-width: 320px; }
.wide { overflow-x: auto; }
.pass { color: var(--go); font-weight: 600; } .fail { color: var(--nogo); font-weight: 600; }
.na { color: var(--inc); font-weight: 600; } .soft { color: var(--inc); font-weight: 600; }
.bad { color: var(--nogo); }
.val { background: #f6f8fa; border: 1px solid var(--line); border-radius: 4px; padding: 1px 4px; }
.empty { color: var(--muted); font-style: italic; }
footer { color: var(--muted); margin-top: 32px; font-size: 12px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int], cls: str = ""
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{cell}</td>' if i in numeric else f"<td>{cell}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    attr = f' class="{cls}"' if cls else ""
    return (
        f'<div class="wide"><table{attr}><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _html_checks(checks: Sequence[Check]) -> str:
    rows = []
    for c in checks:
        css = {True: "pass", False: "fail" if c.blocking else "soft", None: "na"}[c.passed]
        rows.append(
            (
                f"<code>{_e(c.name)}</code>",
                f'<span class="{css}">{_e(_check_mark(c))}</span>',
                _e(_num(c.observed)),
                _e(_num(c.threshold)),
                _e(c.detail),
            )
        )
    return _table(("check", "result", "observed", "threshold", "detail"), rows, set(), "checks")


def _html_endpoints(endpoints: Sequence[EndpointStats]) -> str:
    if not endpoints:
        return '<p class="empty">No exchanges recorded yet.</p>'
    rows = []
    for e in endpoints:
        cells = [_e(cell) for cell in _endpoint_cells(e)]
        cells[0] = f"<code>{cells[0]}</code>"
        if e.strict_mismatches:
            cells[_STRICT_COLUMN] = f'<span class="bad">{cells[_STRICT_COLUMN]}</span>'
        rows.append(tuple(cells))
    headers = (
        "endpoint",
        "pairs",
        "match",
        "differ",
        "noise only",
        "skipped",
        "error",
        "pending",
        "strict mismatch",
        "tolerance violations",
        "noise differences",
        "primary p50 / p99 ms",
        "canary p50 / p99 ms",
    )
    return _table(headers, rows, set(range(1, 13)))


def _html_fields(fields: Sequence[FieldStat], empty: str) -> str:
    if not fields:
        return f'<p class="empty">{_e(empty)}</p>'
    rows = []
    for f in fields:
        ex = f.example
        rows.append(
            (
                f"<code>{_e(f.endpoint)}</code>",
                f"<code>{_e(f.field)}</code>",
                _e(f.judgement) + (f"<br><small>{_e(f.rule)}</small>" if f.rule else ""),
                str(f.exchanges),
                f'<span class="mono">{_e(ex.trace_id)}</span><br>'
                f"<code>{_e(ex.path)}</code> ({_e(ex.kind)})",
                f'<code class="val">{_e(format_value(ex.primary_value))}</code>',
                f'<code class="val">{_e(format_value(ex.other_value))}</code>',
            )
        )
    headers = (
        "endpoint",
        "field",
        "judged",
        "exchanges",
        "example: trace id, path",
        "primary",
        "canary",
    )
    return _table(headers, rows, {3})


def _html_runtime(runtime: Sequence[RuntimeSummary]) -> str:
    rows = [tuple(_e(cell) for cell in _runtime_cells(r)) for r in runtime]
    return _table(_RUNTIME_HEADERS, rows, {1, 2, 3, 4, 5, 6})


def _html_preflight(findings: Sequence[PreflightFinding]) -> str:
    rows = [
        (
            f"<code>{_e(f.check)}</code>",
            '<span class="pass">ok</span>' if f.ok else '<span class="fail">FAIL</span>',
            _e(f.detail),
            _e(_when(f.checked_at)),
        )
        for f in findings
    ]
    return _table(("check", "result", "detail", "checked"), rows, set())


def render_html(report: Report) -> str:
    """The report as one self-contained HTML document (inline CSS, no external reference)."""
    run = report.run
    verdict = report.verdict
    v = verdict.verdict.value
    failed = [c for c in verdict.checks if c.passed is False]
    why = "; ".join(f"{c.name}: {c.detail or _num(c.observed)}" for c in failed[:3])
    sections = [
        f'<section class="banner {_e(v)}"><div class="v">{_e(v.replace("_", "-"))}</div>'
        f"<div>{_e(why) if why else _e(_summary_line(report))}</div></section>",
        "<h2>Checks</h2>",
        _html_checks(verdict.checks),
        "<h2>Endpoints</h2>",
        _html_endpoints(report.endpoints),
        "<h2>Top differing fields</h2>",
        _html_fields(report.fields, "No strict or tolerance differences."),
    ]
    if report.noise:
        sections += [
            "<h2>Noise</h2>",
            '<p class="meta">Fields that also differ between two primaries: '
            "listed, not counted against the canary.</p>",
            _html_fields(report.noise, ""),
        ]
    if report.waived:
        sections += ["<h2>Waived</h2>", _html_fields(report.waived, "")]
    if report.runtime:
        sections += ["<h2>Runtime</h2>", _html_runtime(report.runtime)]
    if report.preflight:
        sections += ["<h2>Preflight</h2>", _html_preflight(report.preflight)]
    if run.losses:
        lost = ", ".join(f"{k}: {n}" for k, n in sorted(run.losses.items()))
        sections += ["<h2>Not recorded</h2>", f"<p>{_e(lost)}</p>"]
    body = "\n".join(sections)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>graygate {_e(v)}: {_e(run.name)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>graygate report: {_e(run.name)}</h1>
<p class="meta">{_e(_versions(run))} · {_e(_summary_line(report))} ·
first exchange {_e(_when(run.first_received_at))}, last {_e(_when(run.last_received_at))}</p>
{body}
<footer>Verdict computed {_e(_when(verdict.computed_at))};
report generated {_e(_when(report.generated_at))}.</footer>
</main>
</body>
</html>
"""
