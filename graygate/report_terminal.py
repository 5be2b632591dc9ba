"""The run report printed in the terminal with rich: verdict and checks, endpoints, the top
differing fields, noise and waived fields, runtime, preflight, what was not recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from diff.report_model import Report
from graygate.formatting import (
    RUNTIME_HEADERS,
    STRICT_COLUMN,
    check_mark,
    check_values,
    endpoint_cells,
    format_value,
    runtime_cells,
    runtime_check_rows,
    summary_line,
    versions,
    when,
)
from graygate.terminal_safety import escape_control, escape_terminal, safe_text
from graygate.values import Check, EndpointStats, PreflightFinding, Verdict
from store.reports import FieldStat, RuntimeSummary

__all__ = ["render_terminal"]


def _add_row(table: Table, *cells: str | Text) -> None:
    """A row whose text came (in part) from traffic: plain strings are escaped (markup and
    control characters) so that rich prints them as the characters they are."""
    table.add_row(*(c if isinstance(c, Text) else escape_terminal(c) for c in cells))


_VERDICT_STYLE = {
    Verdict.GO: "bold white on green",
    Verdict.NO_GO: "bold white on red",
    Verdict.INCONCLUSIVE: "bold black on yellow",
}


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
        _add_row(
            table,
            check.name,
            Text(check_mark(check), style=style),
            check_values(check)[0],
            check_values(check)[1],
            check.detail,
        )
    return table


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
        cells: list[str | Text] = list(endpoint_cells(e))
        if e.strict_mismatches:
            cells[STRICT_COLUMN] = safe_text(str(cells[STRICT_COLUMN]), "red")
        _add_row(table, *cells)
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
        _add_row(
            table,
            f.endpoint,
            f.field,
            f.judgement,
            str(f.exchanges),
            f"{example.trace_id} at {example.path} ({example.kind}): "
            f"{format_value(example.primary_value, 40)} → "
            f"{format_value(example.other_value, 40)}",
        )
    return table


def _runtime_table(runtime: Sequence[RuntimeSummary]) -> Table:
    table = Table(title="Runtime", title_justify="left")
    for name in RUNTIME_HEADERS:
        table.add_column(name, justify="right" if name != "side" else "left")
    for r in runtime:
        _add_row(table, *runtime_cells(r))
    return table


def _preflight_table(findings: Sequence[PreflightFinding]) -> Table:
    table = Table(title="Preflight", title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for f in findings:
        _add_row(
            table,
            f.check,
            Text("ok" if f.ok else "FAIL", style="green" if f.ok else "red"),
            f.detail,
        )
    return table


NARROW = 110  # below this many columns, tables are stacked: one block per row


def _block(console: Console, heading: Text, lines: Sequence[str]) -> None:
    """One stacked row: its heading, then its cells as indented lines wrapped to the width."""
    console.print(heading)
    for line in lines:
        console.print(Padding(escape_terminal(line), (0, 0, 0, 4)))


def _title(console: Console, title: str) -> None:
    console.print(Text(title, style="bold underline"))


def _stacked(report: Report, console: Console) -> None:
    """The report's tables as blocks, for a narrow terminal (80 columns)."""
    verdict = report.verdict
    _title(console, "Checks")
    for c in verdict.checks:
        style = {True: "green", False: "red" if c.blocking else "yellow", None: "yellow"}[c.passed]
        observed, threshold = check_values(c)
        lines = [f"observed {observed}; limit {threshold}"]
        lines += [
            f"{f}: {o} (limit {lim})"
            for f, o, lim in (runtime_check_rows(c) if c.name == "runtime" else [])
        ]
        if c.detail:
            lines.append(c.detail)
        _block(
            console,
            Text.assemble((f"{check_mark(c):<5}", style), " ", safe_text(c.name, "bold")),
            lines,
        )
    if report.endpoints:
        _title(console, "Endpoints")
        for e in report.endpoints:
            cells = endpoint_cells(e)
            _block(
                console,
                safe_text(e.endpoint, "bold"),
                [
                    f"{cells[1]} pairs: {cells[2]} match, {cells[3]} differ, {cells[4]} noise "
                    f"only, {cells[5]} skipped, {cells[6]} error, {cells[7]} pending",
                    f"strict mismatch {cells[8]}; tolerance violations {cells[9]}; "
                    f"noise differences {cells[10]}",
                    f"p50 / p99 ms: primary {cells[11]}, canary {cells[12]}",
                ],
            )
    else:
        console.print("No exchanges recorded yet.")
    groups = [
        ("Top differing fields", report.fields),
        ("Noise (differs by nature; not counted)", report.noise),
        ("Waived (accepted differences)", report.waived),
    ]
    if not report.fields:
        console.print(Text("No strict or tolerance differences.", style="green"))
    for title, fields in groups:
        if not fields:
            continue
        _title(console, title)
        for f in fields:
            x = f.example
            _block(
                console,
                safe_text(f"{f.endpoint}  {f.field}", "bold"),
                [
                    f"{f.judgement} in {f.exchanges} exchange(s)",
                    f"e.g. {x.trace_id} at {x.path} ({x.kind}): "
                    f"{format_value(x.primary_value, 40)} → {format_value(x.other_value, 40)}",
                ],
            )
    if report.runtime:
        _title(console, "Runtime")
        for r in report.runtime:
            cells = runtime_cells(r)
            _block(
                console,
                safe_text(r.role, "bold"),
                [f"{h}: {v}" for h, v in zip(RUNTIME_HEADERS[1:], cells[1:], strict=True)],
            )
    if report.preflight:
        _title(console, "Preflight")
        for pf in report.preflight:
            _block(
                console,
                Text.assemble(
                    ("ok  " if pf.ok else "FAIL", "green" if pf.ok else "red"),
                    " ",
                    safe_text(pf.check),
                ),
                [pf.detail],
            )


def render_terminal(report: Report, console: Console) -> None:
    """Print the report: verdict and checks, endpoints, top fields, noise, runtime, preflight.

    Narrower than :data:`NARROW` columns (an 80-column terminal), each table is printed as
    blocks, one per row, so nothing is squeezed into a one-letter column."""
    run = report.run
    verdict = report.verdict
    head = Text.assemble(
        (f" {verdict.verdict.value} ", _VERDICT_STYLE[verdict.verdict]),
        "  run ",
        safe_text(run.name, "bold"),
        safe_text(f"  {versions(run)}"),
        "\n",
        escape_control(f"{summary_line(report)}; verdict computed {when(verdict.computed_at)}"),
        *(part for change in run.version_changes for part in ("\n", safe_text(change, "yellow"))),
    )
    console.print(Panel(head, title="graygate report", title_align="left", expand=False))
    if console.width < NARROW:
        _stacked(report, console)
        if run.losses:
            console.print(
                escape_terminal(
                    "Not recorded: " + ", ".join(f"{k} {v}" for k, v in sorted(run.losses.items()))
                )
            )
        return
    console.print(_checks_table(verdict.checks))
    for check in verdict.checks:
        rows = runtime_check_rows(check) if check.name == "runtime" else []
        if rows:
            table = Table(title="Runtime check", title_justify="left")
            for name in ("figure", "observed", "limit"):
                table.add_column(name, overflow="fold")
            for row in rows:
                _add_row(table, *row)
            console.print(table)
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
            escape_terminal(
                "Not recorded: " + ", ".join(f"{k} {v}" for k, v in sorted(run.losses.items()))
            )
        )
