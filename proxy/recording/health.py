"""Is the database up? The recorder writes while it is; once a write fails it is down, and
a probe (``ping``) retries it with exponential backoff until it answers.

The times are the event loop's (``loop.time()``), passed in by the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from proxy.recording.series import DATABASE_UP

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "PROBE_TIMEOUT", "DatabaseHealth"]

logger = logging.getLogger(__name__)

BACKOFF_FIRST: Final = 0.25
BACKOFF_MAX: Final = 30.0
PROBE_TIMEOUT: Final = 5.0


class DatabaseHealth:
    """Up or down, and when to probe next (see the module docstring)."""

    def __init__(
        self,
        ping: Callable[[], Awaitable[object]],
        *,
        first_backoff: float = BACKOFF_FIRST,
        max_backoff: float = BACKOFF_MAX,
        probe_timeout: float = PROBE_TIMEOUT,
    ) -> None:
        if not 0 < first_backoff <= max_backoff:
            raise ValueError(
                f"backoff must be 0 < first <= max, not {first_backoff!r}, {max_backoff!r}"
            )
        self._ping = ping
        self._first = first_backoff
        self._max = max_backoff
        self._probe_timeout = probe_timeout
        self._up = True
        self._backoff = first_backoff
        self._probe_at = 0.0
        self._probing = False
        DATABASE_UP.set(1)

    @property
    def up(self) -> bool:
        return self._up

    @property
    def probe_at(self) -> float:
        """When the next probe is due (meaningful while down)."""
        return self._probe_at

    def mark_down(self, now: float) -> bool:
        """A write failed: down, next probe after the backoff. True when it was up."""
        was_up = self._up
        if was_up:
            self._backoff = self._first
        self._up = False
        DATABASE_UP.set(0)
        self._schedule(now)
        return was_up

    def _schedule(self, now: float) -> None:
        self._probe_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self._max)

    def claim_probe(self, now: float) -> bool:
        """True when a probe is due and none is running: the caller then runs ``probe()``
        (in the background; one probe at a time)."""
        if self._up or self._probing or now < self._probe_at:
            return False
        self._probing = True
        return True

    async def probe(self) -> bool:
        """Ping the database once (bounded by the probe timeout): True when it is back."""
        if self._up:
            self._probing = False
            return True
        self._probing = True
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._ping()
        except Exception:
            self._schedule(loop.time())
            return False
        finally:
            self._probing = False
        self._up = True
        self._backoff = self._first
        DATABASE_UP.set(1)
        return True
