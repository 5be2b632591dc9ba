"""``graygate verdict --wait`` on a terminal: one progress line updated in place (a real
pseudo-terminal), plain lines when piped."""

from __future__ import annotations

import fcntl
import io
import os
import struct
import termios
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from graygate.verdict_command import verdict_command
from tests.diff.reportseed import seed_inconclusive


def _drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    for _ in range(1000):
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _openpty(columns: int) -> tuple[int, int]:
    """A pseudo-terminal whose window is ``columns`` wide (as a real terminal reports)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return master, slave


async def _progress_on_terminal(engine: AsyncEngine, columns: int) -> tuple[int, str, str]:
    seeded = await seed_inconclusive(engine, f"progress-{uuid.uuid4().hex[:8]}")
    master, slave = _openpty(columns)
    try:
        with open(slave, "w", encoding="utf-8", closefd=False) as tty:  # noqa: ASYNC230 - a pty fd
            assert tty.isatty()
            out = io.StringIO()
            code = await verdict_command(
                engine,
                seeded.run,
                wait=True,
                timeout=3.0,  # several updates even when the machine is busy
                as_json=False,
                out=out,
                err=tty,
                interval=0.2,
            )
        raw = _drain(master).decode()
    finally:
        os.close(slave)
        os.close(master)
    return code, out.getvalue(), raw


async def test_progress_is_one_updating_line_on_a_terminal(engine: AsyncEngine) -> None:
    code, out, raw = await _progress_on_terminal(engine, 200)
    assert code == 2 and "INCONCLUSIVE" in out
    updates = raw.count("\r") - raw.count("\r\n")  # the tty turns "\n" into "\r\n"
    assert updates >= 2, raw
    assert raw.count("\n") == 1 and raw.endswith("\n")  # one line, ended once
    assert "pairs 2/10" in raw and "s left" in raw and "\x1b[K" in raw, raw


async def test_progress_is_plain_lines_when_piped(engine: AsyncEngine) -> None:
    seeded = await seed_inconclusive(engine, f"progress-{uuid.uuid4().hex[:8]}")
    err = io.StringIO()
    code = await verdict_command(
        engine,
        seeded.run,
        wait=True,
        timeout=0.5,
        as_json=False,
        out=io.StringIO(),
        err=err,
        interval=0.2,
    )
    assert code == 2
    text = err.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.startswith(f"graygate: {seeded.run} INCONCLUSIVE") and text.endswith("\n")


async def test_progress_never_wraps_on_a_narrow_terminal(engine: AsyncEngine) -> None:
    code, _, raw = await _progress_on_terminal(engine, 40)
    assert code == 2
    lines = [part.removesuffix("\x1b[K") for part in raw.strip().split("\r") if part]
    assert lines, raw
    assert all(len(line) <= 40 for line in lines), lines
