"""``graygate verdict RUN [--wait] [--timeout S] [--json]``: the pipeline's gate.

Exit codes: 0 GO, 1 NO_GO, 2 INCONCLUSIVE (not enough evidence, by the deadline with
``--wait``), 3 cannot answer (database away, unknown run; one line on stderr).

With ``--wait`` the verdict is computed again every couple of seconds until it is GO or
NO_GO, or the deadline passes. A database that answered once and then goes away is waited
for until the deadline; one that never answered, or an unknown run, ends the command at once.
The verdict history gets the first verdict, every change, and the last one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
from typing import Any, TextIO

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.evaluate import evaluate_run, record_result
from graygate.errors import StoreUnavailable, UnknownRun
from graygate.terminal_safety import escape_control
from graygate.values import Check, Verdict, VerdictResult

__all__ = [
    "EXIT_CODES",
    "EXIT_UNAVAILABLE",
    "format_check",
    "format_verdict",
    "progress_line",
    "verdict_command",
]

logger = logging.getLogger(__name__)

EXIT_CODES = {Verdict.GO: 0, Verdict.NO_GO: 1, Verdict.INCONCLUSIVE: 2}
EXIT_UNAVAILABLE = 3
POLL_INTERVAL_S = 2.0
PROGRESS_EVERY_S = 30.0  # with --wait, a progress line when it changes or this often


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value(x)}" for k, x in v.items() if x is not None)
    return str(v)


def format_check(check: Check) -> str:
    """One line: status, name, observed and threshold, detail.

    PASS / FAIL; FAIL* a failed non-blocking check (INCONCLUSIVE); WAIT a blocking check
    that cannot be decided yet (INCONCLUSIVE); SKIP a non-blocking one (informational).
    """
    if check.passed is True:
        status = "PASS"
    elif check.passed is False:
        status = "FAIL" if check.blocking else "FAIL*"
    else:
        status = "WAIT" if check.blocking else "SKIP"
    facts = []
    if check.observed is not None and not isinstance(check.observed, dict | list):
        facts.append(f"observed {_value(check.observed)}")
    if check.threshold is not None:
        facts.append(f"threshold {_value(check.threshold)}")
    line = f"{status:<5} {check.name:<10} " + "; ".join(facts)
    if check.detail:
        line += (": " if facts else "") + check.detail
    # Details name endpoints and fields that came from traffic: no escape sequence reaches
    # the operator's terminal.
    return escape_control(" ".join(line.split()))


def format_verdict(result: VerdictResult) -> str:
    lines = [f"run {result.run}: {result.verdict.value} (computed {result.computed_at})"]
    lines.extend("  " + format_check(c) for c in result.checks)
    return "\n".join(lines) + "\n"


def _print_result(result: VerdictResult, as_json: bool, out: TextIO) -> None:
    if as_json:
        body = {**result.as_dict(), "reason": result.reason}  # the gate's reason, too
        out.write(orjson.dumps(body, default=str).decode() + "\n")
    else:
        out.write(format_verdict(result))
    out.flush()


def _cannot_answer(run: str, message: str, as_json: bool, out: TextIO, err: TextIO) -> int:
    err.write(f"graygate: {message}\n")
    err.flush()
    if as_json:
        out.write(orjson.dumps({"run": run, "verdict": None, "error": message}).decode() + "\n")
        out.flush()
    return EXIT_UNAVAILABLE


def _progress(result: VerdictResult) -> str:
    """Why the verdict is not final yet: the first undecided or failed check."""
    why = [
        f"{c.name}: {c.detail}"
        for c in result.checks
        if (c.passed is False) or (c.passed is None and c.blocking)
    ]
    return f"{result.verdict.value}" + (f": {escape_control(why[0])}" if why else "")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _fit(line: str, stream: TextIO) -> str:
    """``line`` cut to the width of the terminal ``stream`` is (the progress line must not
    wrap, or rewriting it in place would leave copies); uncut when that width is unknown."""
    try:
        width = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        width = 0
    return line if width <= 0 or len(line) < width else line[: max(10, width - 2)] + "…"


def progress_line(result: VerdictResult, remaining: float) -> str:
    """What ``--wait`` shows on a terminal: pairs judged against what the evidence check
    needs, the unjudged backlog, the time left, and what the verdict waits for."""
    parts = [f"graygate: {result.run} {result.verdict.value}"]
    checks = {c.name: c for c in result.checks}
    evidence = checks.get("evidence")
    if evidence is not None and isinstance(evidence.threshold, dict):
        need = evidence.threshold.get("min_pairs")
        parts.append(f"pairs {_value(evidence.observed)}/{_value(need)}")
    backlog = checks.get("backlog")
    if backlog is not None and isinstance(backlog.observed, int | float):
        parts.append(f"backlog {backlog.observed * 100:.0f}% unjudged")
    parts.append(f"{max(0.0, remaining):.0f}s left")
    why = [
        c.name for c in result.checks if (c.passed is False) or (c.passed is None and c.blocking)
    ]
    if why:
        parts.append("waiting on " + ", ".join(why[:3]))
    return escape_control(" · ".join(parts))


async def verdict_command(
    engine: AsyncEngine,
    run: str,
    *,
    wait: bool,
    timeout: float,  # noqa: ASYNC109 - the CLI's --timeout, a deadline for --wait
    as_json: bool,
    out: TextIO,
    err: TextIO | None = None,
    interval: float = POLL_INTERVAL_S,
) -> int:
    """Print the run's verdict and return the exit code (0 GO, 1 NO_GO, 2 INCONCLUSIVE,
    3 cannot answer)."""
    err = err if err is not None else sys.stderr
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(0.0, timeout)
    last: VerdictResult | None = None
    recorded: VerdictResult | None = None
    last_error: str | None = None
    shown, shown_at = "", -math.inf  # the last progress line, and when
    # On a terminal, progress is one line updated in place; piped, plain lines.
    tty = wait and _isatty(err)
    on_line = False
    while True:
        try:
            result = await evaluate_run(engine, run, record=False)
        except UnknownRun as exc:
            return _cannot_answer(run, str(exc), as_json, out, err)
        except StoreUnavailable as exc:
            if last is None or not wait:
                return _cannot_answer(run, str(exc), as_json, out, err)
            if last_error is None:
                err.write(f"graygate: {exc}; retrying until the deadline\n")
            last_error = str(exc)
        else:
            last_error = None
            final = not wait or result.verdict is not Verdict.INCONCLUSIVE
            if recorded is None or recorded.verdict is not result.verdict or final:
                result = await _record(engine, result)
                recorded = result
            last = result
            if final:
                if on_line:
                    err.write("\n")
                    err.flush()
                _print_result(result, as_json, out)
                return EXIT_CODES[result.verdict]
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        if last_error is None and last is not None:
            if tty:
                # One line, rewritten in place: carriage return, the line, clear to its end.
                err.write("\r" + _fit(progress_line(last, remaining), err) + "\x1b[K")
                err.flush()
                on_line = True
            else:
                progress = _progress(last)
                if progress != shown or loop.time() - shown_at >= PROGRESS_EVERY_S:
                    err.write(f"graygate: {run} {progress} (waiting, {remaining:.0f}s left)\n")
                    err.flush()
                    shown, shown_at = progress, loop.time()
        await asyncio.sleep(min(interval, remaining))
    if on_line:
        err.write("\n")
        err.flush()
    if last_error is not None or last is None:
        return _cannot_answer(run, last_error or "no verdict", as_json, out, err)
    if recorded is not last:
        last = await _record(engine, last)
    _print_result(last, as_json, out)
    return EXIT_CODES[last.verdict]


async def _record(engine: AsyncEngine, result: VerdictResult) -> VerdictResult:
    """Append to the verdict history; the answer stands even when that fails."""
    try:
        await record_result(engine, result)
    except StoreUnavailable as exc:
        logger.warning("verdict of run %s not recorded: %s", result.run, exc)
    return result
