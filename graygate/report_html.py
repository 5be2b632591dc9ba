"""The run report as ONE self-contained HTML document (inline CSS, no script, no external
reference), fit to attach to a ticket; served by the admin app at ``GET /runs/{run}``."""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from diff.paths import render_location
from diff.report_model import KINDS, FieldTree, Report, RuntimeChart, path_segments
from graygate.charts import RefLine, Series, line_chart
from graygate.formatting import (
    RUNTIME_HEADERS,
    STRICT_COLUMN,
    check_mark,
    check_values,
    delta_ms,
    endpoint_cells,
    format_value,
    fraction_of,
    ms_unit,
    num,
    pct,
    runtime_cells,
    runtime_check_rows,
    share,
    summary_line,
    versions,
    when,
)
from graygate.values import Check, EndpointStats, PreflightFinding
from graygate.vocabulary import FAILURE_JUDGEMENTS
from store.report_series import LatencyCurve, MismatchBucket
from store.reports import ExchangeDetail, FieldStat, RunSummary, RuntimeSummary

__all__ = ["render_exchange", "render_exchange_page", "render_html", "render_runs_page"]

logger = logging.getLogger(__name__)


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
.charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 6px;
         padding: 6px; max-width: 100%; }
figcaption { color: var(--muted); font-size: 12px; max-width: 560px; }
svg.chart { max-width: 100%; height: auto; font: 11px sans-serif; }
svg.chart .ct { font-weight: 600; font-size: 12px; } svg.chart .tk { fill: #57606a; }
svg.chart .empty { fill: #57606a; font-style: italic; }
.tag { font-size: 11px; border-radius: 10px; padding: 0 6px; margin-left: 4px; }
.tag.noise, .tag.waived { background: #eef1f4; color: var(--muted); }
.tag.conseq { background: #fff8c5; } .tag.root { background: #ffebe9; color: var(--nogo); }
tr.noise td, tr.waived td { color: var(--muted); }
.ex { margin-bottom: 4px; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.side { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 8px;
        min-width: 0; }
pre.body { font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace; background: #f6f8fa;
           padding: 8px; overflow-x: auto; white-space: pre; }
mark { background: #ffd8d3; }
table.hdr td { padding: 2px 6px; }
section.exchange { margin-top: 24px; border-top: 2px solid var(--line); padding-top: 8px; }
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
                _e(check_values(c)[0]),
                _e(check_values(c)[1]),
                _e(c.detail) + (_html_runtime_check(c) if c.name == "runtime" else ""),
            )
        )
    return _table(("check", "result", "observed", "threshold", "detail"), rows, set(), "checks")


def _html_runtime_check(check: Check) -> str:
    rows = [tuple(_e(cell) for cell in row) for row in runtime_check_rows(check)]
    if not rows:
        return ""
    return _table(("figure", "observed", "limit"), rows, set(), "runtime-check")


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


def render_html(
    report: Report,
    *,
    exchange_link: Callable[[str], str] | None = None,
    refresh: int | None = None,
) -> str:
    """The report as one self-contained HTML document (inline CSS, no external reference).

    Examples link to ``exchange_link(trace_id)`` when given (the admin app's exchange
    pages), else to the exchanges the file carries as anchors. ``refresh`` (seconds) makes a
    browser reload it (the live report while the run receives traffic)."""
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
    ]
    if report.charts is not None:
        sections += [
            "<h2>Latency, primary vs canary</h2>",
            _html_latency_charts(report),
            "<h2>Failing pairs over time</h2>",
            _html_mismatch_charts(report),
        ]
        if report.charts.runtime is not None:
            sections += ["<h2>Canary runtime</h2>", _html_runtime_charts(report.charts.runtime)]
    if report.trees:
        sections += [
            "<h2>Differing fields, root cause first</h2>",
            '<p class="meta">Per endpoint, the fields that differ, earliest first; a field '
            "that only ever differs in exchanges where another already does is marked as its "
            "likely consequence. Counts are exchanges, per kind of difference.</p>",
            *(_html_tree(report, t, exchange_link) for t in report.trees),
        ]
    else:
        sections += [
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
    if report.exchanges and exchange_link is None:
        sections += ["<h2>Example exchanges</h2>"]
        sections += [render_exchange(x) for x in report.exchanges.values()]
    body = "\n".join(sections)
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{meta}<title>graygate {_e(v)}: {_e(run.name)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>graygate report: {_e(run.name)}</h1>
<p class="meta">{_e(versions(run))} · {_e(summary_line(report))} ·
first exchange {_e(when(run.first_received_at))}, last {_e(when(run.last_received_at))}</p>
{"".join(f'<p class="meta version-change">{_e(c)}</p>' for c in run.version_changes)}
{body}
<footer>Verdict computed {_e(when(verdict.computed_at))};
report generated {_e(when(report.generated_at))}.</footer>
</main>
</body>
</html>
"""


# --------------------------------------------------------------------------- charts

_MAX_CHARTS = 8  # charts per kind (endpoints): the busiest, then those that fail


def _html_latency_charts(report: Report) -> str:
    charts = report.charts
    if charts is None or not charts.latency:
        return '<p class="empty">No latency pairs yet.</p>'
    by_ep: dict[str, dict[str, LatencyCurve]] = {}
    for c in charts.latency:
        by_ep.setdefault(c.endpoint, {})[c.role] = c
    busiest = sorted(by_ep, key=lambda ep: -max(c.pairs for c in by_ep[ep].values()))
    out = ['<div class="charts">']
    for i, ep in enumerate(busiest[:_MAX_CHARTS]):
        curves = by_ep[ep]
        series = [
            Series(role, [(ms_value, q) for q, ms_value in c.points], kind=role)
            for role, c in sorted(curves.items())
        ]
        refs: list[RefLine] = []
        words = []
        for role, c in sorted(curves.items()):
            p50, p99 = c.at(0.5), c.at(0.99)
            if p50 is not None:
                refs.append(RefLine(p50, f"{role} p50 {ms_unit(p50)}", role, role=f"p50-{role}"))
            if p99 is not None:
                refs.append(RefLine(p99, f"{role} p99 {ms_unit(p99)}", role, role=f"p99-{role}"))
            words.append(f"{role} p50 {ms_unit(p50)}, p99 {ms_unit(p99)} ({c.pairs} pairs)")
        primary, canary = curves.get("primary"), curves.get("canary")
        if primary and canary:
            p50p, p50c = primary.at(0.5), canary.at(0.5)
            if p50p is not None and p50c is not None:
                words.append(f"canary p50 {delta_ms(p50c - p50p)}")
            if p50p is not None and charts.latency_max_increase is not None:
                margin = p50p * (1 + charts.latency_max_increase)
                refs.append(
                    RefLine(
                        margin,
                        f"margin: primary p50 +{pct(charts.latency_max_increase)} "
                        f"= {ms_unit(margin)}",
                        "trend",
                        role="margin",
                    )
                )
                words.append(
                    f"margin {ms_unit(margin)} (primary p50 +{pct(charts.latency_max_increase)})"
                )
        svg = line_chart(
            f"{ep}: latency CDF",
            series,
            x_label="latency (ms, log scale)",
            y_label="share of pairs",
            x_format=lambda v: f"{v:g}",
            y_format=lambda v: f"{v * 100:.0f}%",
            x_log=True,
            refs=refs,
            y_min=0.0,
            y_max=1.0,
            chart_id=f"latency-{i}",
        )
        out.append(
            f'<figure data-endpoint="{_e(ep)}">{svg}<figcaption>{_e("; ".join(words))}'
            "</figcaption></figure>"
        )
    out.append("</div>")
    return "".join(out)


def _html_mismatch_charts(report: Report) -> str:
    charts = report.charts
    if charts is None or not charts.mismatches:
        return '<p class="empty">No pairs yet.</p>'
    by_ep: dict[str, list[MismatchBucket]] = {}
    for b in charts.mismatches:
        by_ep.setdefault(b.endpoint, []).append(b)
    start = min(b.start for b in charts.mismatches)
    failing = [ep for ep, bs in by_ep.items() if any(b.strict or b.tolerance for b in bs)]
    clean = [ep for ep in by_ep if ep not in failing]
    out = ['<div class="charts">']
    for i, ep in enumerate(failing[:_MAX_CHARTS]):
        bs = by_ep[ep]
        width = bs[0].seconds
        per = f"{width // 60:g} min" if width >= 60 else f"{width:g} s"

        def xs(b: MismatchBucket) -> float:
            return (b.start - start).total_seconds() / 60

        series = [
            Series("strict mismatch", [(xs(b), b.strict / b.pairs) for b in bs], kind="strict"),
            Series(
                "tolerance violation",
                [(xs(b), b.tolerance / b.pairs) for b in bs],
                kind="tolerance",
            ),
        ]
        svg = line_chart(
            f"{ep}: share of pairs failing per {per}",
            series,
            x_label=f"minutes since {when(start)}",
            y_label="share of pairs",
            y_format=lambda v: f"{v * 100:.0f}%",
            y_min=0.0,
            chart_id=f"mismatch-{i}",
        )
        worst = max(bs, key=lambda b: b.strict / b.pairs)
        caption = (
            f"{sum(b.strict for b in bs)} of {sum(b.pairs for b in bs)} pairs with a strict "
            f"mismatch; worst bucket {when(worst.start)}: "
            f"{fraction_of(worst.strict / worst.pairs)}"
        )
        out.append(
            f'<figure data-endpoint="{_e(ep)}">{svg}<figcaption>{_e(caption)}</figcaption></figure>'
        )
    out.append("</div>")
    if clean:
        out.append(
            '<p class="meta">No strict mismatch or tolerance violation in any minute: '
            + ", ".join(f"<code>{_e(ep)}</code>" for ep in clean)
            + "</p>"
        )
    return "".join(out)


def _html_runtime_charts(rt: RuntimeChart) -> str:
    refs = []
    if rt.baseline_mean_ms is not None:
        refs.append(
            RefLine(
                rt.baseline_mean_ms,
                f"baseline mean {ms_unit(rt.baseline_mean_ms)}",
                "primary",
                vertical=False,
                role="baseline",
            )
        )
    if rt.threshold_ms is not None:
        refs.append(
            RefLine(
                rt.threshold_ms,
                f"threshold {ms_unit(rt.threshold_ms)}",
                "fail",
                vertical=False,
                role="threshold",
            )
        )
    windows = [(x, p) for x, p, _ in rt.windows if p is not None]
    failed = [f for _, p, f in rt.windows if p is not None]
    pauses = line_chart(
        f"{rt.role}: GC pause p99 per {rt.window_s:g} s window",
        [Series("GC pause p99", windows, kind="canary", failed=failed)],
        x_label=f"seconds since {when(rt.started_at)}",
        y_label="ms",
        refs=refs,
        y_min=0.0,
        chart_id="runtime-pauses",
    )

    def with_trend(
        name: str, points: Sequence[tuple[float, float]], trend: Any, scale: float = 1.0
    ) -> list[Series]:
        out = [Series(name, [(x, y / scale) for x, y in points], kind="canary")]
        if trend is not None:
            (x0, y0), (x1, y1) = trend
            out.append(
                Series(
                    "fitted trend",
                    [(x0, y0 / scale), (x1, y1 / scale)],
                    kind="trend",
                    dashed=True,
                    dots=False,
                )
            )
        return out

    gor = line_chart(
        f"{rt.role}: goroutines",
        with_trend("goroutines", rt.goroutines, rt.goroutine_trend),
        x_label=f"seconds since {when(rt.started_at)}",
        y_label="goroutines",
        y_min=0.0,
        chart_id="runtime-goroutines",
    )
    heap = line_chart(
        f"{rt.role}: heap in use",
        with_trend("heap in use (MiB)", rt.heap, rt.heap_trend, scale=1024 * 1024),
        x_label=f"seconds since {when(rt.started_at)}",
        y_label="MiB",
        y_min=0.0,
        chart_id="runtime-heap",
    )
    figures = "".join(f"<figure>{svg}</figure>" for svg in (pauses, gor, heap))
    return f'<div class="charts">{figures}</div>'


# --------------------------------------------------------------------------- field tree


def _exchange_href(report: Report, trace_id: str, link: Callable[[str], str] | None) -> str:
    if link is not None:
        return link(trace_id)
    return f"#x-{trace_id}" if trace_id in report.exchanges else ""


def _html_tree(report: Report, tree: FieldTree, link: Callable[[str], str] | None) -> str:
    rows = []
    for f in tree.fields:
        depth = max(0, len(path_segments(f.field)) - 2)
        tags = []
        if f.noise:
            tags.append('<span class="tag noise">noise</span>')
        if f.waived:
            tags.append('<span class="tag waived">waived</span>')
        if f.consequence_of:
            tags.append(
                '<span class="tag conseq">likely consequence of '
                f"<code>{_e(f.consequence_of)}</code></span>"
            )
        elif f.failing:
            tags.append(
                '<span class="tag root">first to differ</span>' if f is tree.fields[0] else ""
            )
        examples = []
        for x in f.examples:
            href = _exchange_href(report, x.example_trace_id, link)
            label = _e(x.example_trace_id[:12])
            ref = f'<a href="{_e(href)}">{label}</a>' if href else label
            examples.append(
                f'<div class="ex">{ref} <small>{_e(x.kind)}, {_e(x.judgement)}</small><br>'
                f'<code class="val">{_e(format_value(x.example_primary))}</code> → '
                f'<code class="val">{_e(format_value(x.example_canary))}</code></div>'
            )
        kinds = [str(f.kinds.get(k, 0) or "") for k in KINDS]
        judged = ", ".join(f"{k} {n}" for k, n in sorted(f.judgements.items()))
        rules = "<br>".join(f"<small>{_e(r)}</small>" for r in f.rules)
        cls = (
            "noise" if f.noise else "waived" if f.waived else ("conseq" if f.consequence_of else "")
        )
        rows.append(
            f'<tr class="{cls}" data-field="{_e(f.field)}">'
            f'<td style="padding-left:{10 + 16 * depth}px">'
            f"<code>{_e(f.field)}</code> {''.join(tags)}</td>"
            f'<td class="n">{_e(share(f.exchanges, tree.pairs))}</td>'
            + "".join(f'<td class="n">{k}</td>' for k in kinds)
            + f"<td>{_e(judged)}{'<br>' + rules if rules else ''}</td>"
            f"<td>{_e(when(f.first_at))}</td><td>{''.join(examples)}</td></tr>"
        )
    head = "".join(
        f"<th>{_e(h)}</th>"
        for h in (
            "field",
            "exchanges",
            *KINDS,
            "judged (rule)",
            "first differed",
            "examples: primary → canary",
        )
    )
    return (
        f"<h3><code>{_e(tree.endpoint)}</code> <small>{tree.pairs} pairs; first failing "
        f"difference {_e(when(tree.first_at))}</small></h3>"
        f'<div class="wide"><table class="tree"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


# --------------------------------------------------------------------------- exchanges


def _pretty_lines(value: Any) -> list[tuple[str, str]]:
    """A JSON value pretty-printed as (location, line) pairs, the location being the
    rendered path of the value that line opens (for highlighting)."""
    lines: list[tuple[str, str]] = []

    def walk(v: Any, loc: tuple[str | int, ...], indent: int, prefix: str, comma: str) -> None:
        pad = "  " * indent
        here = render_location(loc)
        if isinstance(v, dict) and v:
            lines.append((here, f"{pad}{prefix}{{"))
            items = list(v.items())
            for i, (k, child) in enumerate(items):
                key = orjson.dumps(str(k)).decode() + ": "
                walk(child, (*loc, str(k)), indent + 1, key, "," if i < len(items) - 1 else "")
            lines.append((here, f"{pad}}}{comma}"))
        elif isinstance(v, list) and v:
            lines.append((here, f"{pad}{prefix}["))
            for i, child in enumerate(v):
                walk(child, (*loc, i), indent + 1, "", "," if i < len(v) - 1 else "")
            lines.append((here, f"{pad}]{comma}"))
        else:
            lines.append((here, f"{pad}{prefix}{format_value(v, 400)}{comma}"))

    walk(value, (), 0, "", "")
    return lines


def _html_body(body: bytes | None, marks: Mapping[str, str]) -> str:
    if body is None:
        return '<p class="empty">no body recorded</p>'
    if not body:
        return '<p class="empty">empty body</p>'
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:20_000].decode("utf-8", errors="replace")
        return f'<pre class="body">{_e(text)}</pre>'
    out = []
    for loc, line in _pretty_lines(value)[:2000]:
        why = marks.get(loc)
        if why is not None:
            out.append(f'<mark title="{_e(why)}">{_e(line)}</mark>')
        else:
            out.append(_e(line))
    return '<pre class="body">' + "\n".join(out) + "</pre>"


def _html_headers(headers: Mapping[str, str] | None) -> str:
    if not headers:
        return '<p class="empty">no headers recorded</p>'
    rows = "".join(
        f"<tr><td><code>{_e(k)}</code></td><td><code>{_e(v)}</code></td></tr>"
        for k, v in headers.items()
    )
    return f'<table class="hdr"><tbody>{rows}</tbody></table>'


def render_exchange(x: ExchangeDetail) -> str:
    """One exchange as an HTML section (anchor ``x-<trace id>``): the request, the primary's
    and the canary's answers side by side with the differing values highlighted, and the
    differences with the rule that judged each."""
    canary_diffs = [d for d in x.differences if d.against == "canary"]
    marks = {
        d.path: f"{d.kind}, judged {d.judgement}" + (f" by {d.rule}" if d.rule else "")
        for d in canary_diffs
    }
    status_diff = any(d.kind == "status" for d in canary_diffs)
    cols = []
    for role in ("primary", "canary"):
        a = x.responses.get(role)  # type: ignore[call-overload]
        if a is None:
            cols.append(f'<div class="side"><h4>{role}</h4><p class="empty">not asked</p></div>')
            continue
        status = _e(a.status if a.status is not None else f"no answer ({a.error})")
        status_html = f"<mark>{status}</mark>" if status_diff else status
        cols.append(
            f'<div class="side"><h4>{role}: {status_html} <small>in {_e(ms_unit(a.latency_ms))}'
            f"</small></h4>{_html_headers(a.headers)}"
            + (
                f'<p class="empty">body not kept (record.bodies.sample): sha256 '
                f"<code>{_e(a.body_sha256.hex())}</code></p>"
                if a.body_sha256 is not None
                else _html_body(a.body, marks)
            )
            + "</div>"
        )
    rows = [
        (
            f"<code>{_e(d.path)}</code>",
            _e(d.kind),
            f'<code class="val">{_e(format_value(d.primary_value))}</code>',
            f'<code class="val">{_e(format_value(d.other_value))}</code>',
            f'<span class="{"bad" if d.judgement in FAILURE_JUDGEMENTS else ""}">'
            f"{_e(d.judgement)}</span>",
            f"<code>{_e(d.rule)}</code>" if d.rule else "",
        )
        for d in canary_diffs
    ]
    diffs = (
        _table(("path", "kind", "primary", "canary", "judged", "rule"), rows, set())
        if rows
        else '<p class="empty">No differences against the canary.</p>'
    )
    r = x.exchange
    query = f"?{r.query}" if r.query else ""
    return (
        f'<section class="exchange" id="x-{_e(r.trace_id)}">'
        f"<h3>Exchange <code>{_e(r.trace_id)}</code></h3>"
        f'<p class="meta"><code>{_e(r.method)} {_e(r.path)}{_e(query)}</code> · '
        f"endpoint <code>{_e(r.endpoint)}</code> · received {_e(when(r.received_at))} · "
        f"served by {_e(r.served_by)} · outcome {_e(x.outcome or 'not judged yet')}</p>"
        f"<h4>Request</h4>{_html_headers(r.request_headers)}"
        f"{_html_body(r.request_body, {})}"
        f'<div class="sides">{"".join(cols)}</div>'
        f"<h4>Differences</h4>{diffs}</section>"
    )


def _page(title: str, body: str, *, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{meta}<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
{body}
</main>
</body>
</html>
"""


def render_exchange_page(x: ExchangeDetail, *, report_href: str) -> str:
    """The exchange page of the admin app (``/runs/{run}/exchanges/{trace_id}``)."""
    body = (
        f'<p class="meta"><a href="{_e(report_href)}">← report of run {_e(x.run)}</a></p>'
        + render_exchange(x)
    )
    return _page(f"graygate exchange {x.exchange.trace_id}", body)


def render_runs_page(runs: Sequence[RunSummary], *, href: Callable[[str], str]) -> str:
    """The runs listing (``/`` and ``/runs``): each run's latest verdict, linking its report."""
    rows = []
    for r in runs:
        verdict = r.last_verdict or "not decided"
        cls = {"GO": "pass", "NO_GO": "fail", "INCONCLUSIVE": "na"}.get(r.last_verdict or "", "")
        rows.append(
            (
                f'<a href="{_e(href(r.name))}"><code>{_e(r.name)}</code></a>',
                f'<span class="{cls}">{_e(verdict)}</span>',
                _e(when(r.last_verdict_at)),
                _e(f"{r.primary_version or '?'} → {r.canary_version or '?'}"),
                _e(r.exchanges),
                _e(share(r.judged, r.exchanges, "exchanges")),
                _e(share(r.differing, r.judged, "judged")),
                _e(r.unrecorded),
                _e(when(r.updated_at)),
            )
        )
    table = (
        _table(
            (
                "run",
                "latest verdict",
                "decided",
                "versions",
                "exchanges",
                "judged",
                "differing",
                "not recorded",
                "updated",
            ),
            rows,
            {4, 5, 6, 7},
        )
        if rows
        else '<p class="empty">No runs yet.</p>'
    )
    return _page("graygate runs", f"<h1>graygate runs</h1>{table}")
