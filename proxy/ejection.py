"""Outlier ejection of a mirror target (request path step 5), as Envoy ejects a host.

A canary that answers every mirror with something broken (a head past the bounds, bytes
that are not HTTP, a reset, a refused connect) costs the proxy a connection, a parse and a
failure per mirror and tells the verdict nothing new: its errors are already counted. After
``consecutive`` broken answers in a row, an :class:`Ejection` ejects the upstream: mirrors
to it are skipped (``SkipReason.EJECTED``, recorded with the exchange and counted in
``graygate_mirror_skipped_total{reason="ejected"}``, so the verdict sees evidence that
was not gathered) for ``base_s`` seconds. The first mirror after that is a probe: broken, the
upstream is ejected again at once for twice as long (up to ``max_s``); sound (any answer
that is HTTP, whatever its status, or a timeout: a slow canary is the latency check's
business), the count starts over.

One :class:`Ejection` per upstream, kept on its ``proxy.upstream_pools.Upstream``; plain
state on the event loop's thread, no timer: the time is compared when a mirror starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from graygate.vocabulary import ErrorKind

__all__ = ["BROKEN", "DiscardGate", "Ejection"]

logger = logging.getLogger(__name__)

# The failures that count: the upstream answered with something that is not a sound HTTP
# answer, or broke or refused the connection. A timeout does not (a slow canary is
# evidence for the latency check, and costs the proxy no CPU while it waits).
BROKEN: Final = frozenset({ErrorKind.ERROR, ErrorKind.RESET, ErrorKind.REFUSED})


class Ejection:
    """Whether mirrors to one upstream are ejected now; fed each mirror's outcome."""

    __slots__ = (
        "_clock",
        "base_s",
        "broken",
        "consecutive",
        "ejections",
        "max_s",
        "role",
        "total",
        "until",
    )

    def __init__(
        self,
        role: str,
        consecutive: int,
        base_s: float,
        max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if consecutive < 0 or base_s <= 0 or max_s < base_s:
            raise ValueError(f"bad ejection bounds: {consecutive=}, {base_s=}, {max_s=}")
        self.role = role
        self.consecutive = consecutive  # 0: never ejected
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        self.broken = 0  # broken answers in a row
        self.ejections = 0  # ejections in a row (no sound answer between them)
        self.total = 0  # ejections since start
        self.until = 0.0  # clock time the current ejection ends

    def ejected(self) -> bool:
        """Mirrors to this upstream are skipped now."""
        return self.until > 0.0 and self._clock() < self.until

    def outcome(self, error: str | None) -> float:
        """One mirror's outcome (its error kind, None when it answered). Returns the
        seconds of the ejection this starts, 0.0 when it starts none."""
        if error not in BROKEN:
            self.broken = 0
            self.ejections = 0
            return 0.0
        self.broken += 1
        if self.consecutive == 0:
            return 0.0
        now = self._clock()
        if now < self.until:
            return 0.0  # a mirror started before the ejection: already counted
        # On probation after an ejection, one broken answer ejects again.
        if self.broken < self.consecutive and self.ejections == 0:
            return 0.0
        seconds = min(self.max_s, self.base_s * float(2 ** min(self.ejections, 40)))
        self.ejections += 1
        self.total += 1
        self.broken = 0
        self.until = now + seconds
        logger.warning(
            "%s ejected from mirroring for %.3g s after %s broken answer(s) in a row "
            "(last: %s); ejection %d in a row",
            self.role,
            seconds,
            self.consecutive if self.ejections == 1 else 1,
            error,
            self.ejections,
        )
        return seconds


class DiscardGate:
    """Whether a mirror's answer from one upstream is read on past the record bound to
    time its end (``proxy.upstream.UpstreamAnswer.discard``), per endpoint.

    Reading on costs up to the pool's ``max_discard_bytes`` per mirror. When an endpoint's
    answers outrun that bound ``consecutive`` times in a row (an endless body), they were
    never timed and the reading bought nothing: for ``base_s`` (doubling while the probe
    after each pause outruns it too, up to ``max_s``) the endpoint's answers are cut at the
    record bound instead, left untimed as they would have been (never timed as complete:
    the latency check counts them among the pairs it could not time). An answer that ends
    within the bound starts the count over. ``consecutive: 0`` always reads on."""

    __slots__ = ("_by_endpoint", "_clock", "base_s", "consecutive", "max_s")

    def __init__(
        self,
        consecutive: int,
        base_s: float,
        max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if consecutive < 0 or base_s <= 0 or max_s < base_s:
            raise ValueError(f"bad discard bounds: {consecutive=}, {base_s=}, {max_s=}")
        self.consecutive = consecutive
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        # endpoint -> [outrun in a row, pauses in a row, pause ends at]; endpoints are the
        # route matcher's, bounded (metrics.max_endpoints, then "other").
        self._by_endpoint: dict[str, list[float]] = {}

    def reads_on(self, endpoint: str) -> bool:
        """Read ``endpoint``'s answer on past the record bound, to time it."""
        state = self._by_endpoint.get(endpoint)
        return state is None or self._clock() >= state[2]

    def ended(self, endpoint: str, within: bool) -> float:
        """A read-on answer of ``endpoint`` ended ``within`` the bound, or outran it.
        Returns the seconds of the pause this starts, 0.0 when none."""
        if within:
            self._by_endpoint.pop(endpoint, None)
            return 0.0
        if self.consecutive == 0:
            return 0.0
        state = self._by_endpoint.setdefault(endpoint, [0, 0, 0.0])
        now = self._clock()
        if now < state[2]:
            return 0.0  # read on before the pause began
        state[0] += 1
        if state[0] < self.consecutive and state[1] == 0:
            return 0.0
        seconds = min(self.max_s, self.base_s * float(2 ** min(int(state[1]), 40)))
        state[0] = 0
        state[1] += 1
        state[2] = now + seconds
        return seconds
