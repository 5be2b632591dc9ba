"""The run report as ONE self-contained HTML document (inline CSS, no script, no external
reference), fit to attach to a ticket; served by the admin app at ``GET /runs/{run}``."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from diff.report_model import Report
from graygate.formatting import (
    RUNTIME_HEADERS,
    STRICT_COLUMN,
    check_mark,
    endpoint_cells,
    format_value,
    num,
    runtime_cells,
    summary_line,
    versions,
    when,
)
from graygate.values import Check, EndpointStats, PreflightFinding
from store.reports import FieldStat, RuntimeSummary

__all__ = ["render_html"]


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
                f'<span class="{css}">{_e(check_mark(c))}</span>',
                _e(num(c.observed)),
                _e(num(c.threshold)),
                _e(c.detail),
            )
        )
    return _table(("check", "result", "observed", "threshold", "detail"), rows, set(), "checks")


def _html_endpoints(endpoints: Sequence[EndpointStats]) -> str:
    if not endpoints:
        return '<p class="empty">No exchanges recorded yet.</p>'
    rows = []
    for e in endpoints:
        cells = [_e(cell) for cell in endpoint_cells(e)]
        cells[0] = f"<code>{cells[0]}</code>"
        if e.strict_mismatches:
            cells[STRICT_COLUMN] = f'<span class="bad">{cells[STRICT_COLUMN]}</span>'
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
    rows = [tuple(_e(cell) for cell in runtime_cells(r)) for r in runtime]
    return _table(RUNTIME_HEADERS, rows, {1, 2, 3, 4, 5, 6})


def _html_preflight(findings: Sequence[PreflightFinding]) -> str:
    rows = [
        (
            f"<code>{_e(f.check)}</code>",
            '<span class="pass">ok</span>' if f.ok else '<span class="fail">FAIL</span>',
            _e(f.detail),
            _e(when(f.checked_at)),
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
    why = "; ".join(f"{c.name}: {c.detail or num(c.observed)}" for c in failed[:3])
    sections = [
        f'<section class="banner {_e(v)}"><div class="v">{_e(v.replace("_", "-"))}</div>'
        f"<div>{_e(why) if why else _e(summary_line(report))}</div></section>",
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
<p class="meta">{_e(versions(run))} · {_e(summary_line(report))} ·
first exchange {_e(when(run.first_received_at))}, last {_e(when(run.last_received_at))}</p>
{body}
<footer>Verdict computed {_e(when(verdict.computed_at))};
report generated {_e(when(report.generated_at))}.</footer>
</main>
</body>
</html>
"""
