"""``graygate report RUN [--html FILE]``: print the run's report, or write it as one HTML file.

Exit codes: 0 the report was printed or written; 3 it cannot be made (unknown run, database
away), with one line on stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncEngine

from diff.report_model import build_report
from graygate.errors import StoreUnavailable, UnknownRun
from graygate.report_html import render_html
from graygate.report_terminal import render_terminal

__all__ = ["EXIT_OK", "EXIT_UNAVAILABLE", "report_command", "write_atomically"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNAVAILABLE = 3
_MIN_WIDTH = 120


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, so a
    reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _console(out: TextIO) -> Console:
    interactive = hasattr(out, "isatty") and out.isatty()
    # A terminal: its width (narrow ones get stacked tables). Piped: COLUMNS when set
    # (so ``COLUMNS=80 graygate report RUN | less`` reads at 80), else a wide page.
    columns = os.environ.get("COLUMNS", "")
    piped = int(columns) if columns.isdigit() and int(columns) > 0 else _MIN_WIDTH
    width = None if interactive else min(max(piped, 40), 400)
    return Console(file=out, width=width, soft_wrap=False, highlight=False)


async def report_command(
    engine: AsyncEngine,
    run: str,
    *,
    html: str | None,
    out: TextIO,
    err: TextIO | None = None,
) -> int:
    """Print the report of ``run`` to ``out``, or with ``html`` write it to that file (and
    say so on ``out``). Problems go to ``err`` (stderr) as one line."""
    err = err if err is not None else sys.stderr
    try:
        report = await build_report(engine, run)
    except (UnknownRun, StoreUnavailable) as exc:
        err.write(f"graygate: {exc}\n")
        err.flush()
        return EXIT_UNAVAILABLE
    if html is None:
        render_terminal(report, _console(out))
        return EXIT_OK
    path = Path(html)
    try:
        write_atomically(path, render_html(report))
    except OSError as exc:
        err.write(f"graygate: cannot write {path}: {exc.strerror or exc}\n")
        err.flush()
        return 1
    out.write(f"graygate: report of run {run} ({report.verdict.verdict.value}) written to {path}\n")
    out.flush()
    return EXIT_OK
