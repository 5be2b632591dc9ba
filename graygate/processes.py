"""Process plumbing shared by the shell: the event loop runner, the parent-death hook for
children, and a free loopback port. Imports nothing of graygate above the bottom modules."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["free_port", "lower_priority", "parent_death_signal", "run_async"]

T = TypeVar("T")

logger = logging.getLogger(__name__)


def lower_priority(nice: int) -> int:
    """Lower this process's CPU priority by ``nice`` (``nice(1)``'s scale, up to 19):
    every thread it has (Linux keeps a nice value per thread) and so every thread it starts
    later, which inherits its creator's. Returns how many threads were lowered (0 where the
    platform refuses; logged, the process then runs as it is)."""
    if nice <= 0:
        return 0
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]  # no /proc: the calling thread (the process's, elsewhere)
    lowered = 0
    for tid in tids:
        try:
            current = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
            lowered += 1
        except (AttributeError, OSError) as exc:  # gone meanwhile, or not permitted
            logger.debug("cannot lower thread %s's priority: %s", tid, exc)
    if not lowered:
        logger.warning("cannot lower the process's CPU priority by %d", nice)
    return lowered


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on uvloop when it is installed."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(factory())  # type: ignore[arg-type]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that makes the child get SIGTERM when its parent dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook
