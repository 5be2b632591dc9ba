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

__all__ = ["BROKEN", "Backoff", "DiscardGate", "Ejection"]

logger = logging.getLogger(__name__)

# The failures that count: the upstream answered with something that is not a sound HTTP
# answer, or broke or refused the connection. A timeout does not (a slow canary is
# evidence for the latency check, and costs the proxy no CPU while it waits).
BROKEN: Final = frozenset({ErrorKind.ERROR, ErrorKind.RESET, ErrorKind.REFUSED})


class Backoff:
    """Failures in a row that pause something, for longer each time: after ``consecutive``
    failures in a row a pause of ``base_s`` begins; the first try after it is a probe, and
    a failed probe pauses again at once for twice as long (up to ``max_s``); a success
    starts the count over. Failures of tries started before a pause began change nothing.
    ``consecutive: 0`` never pauses. The time is compared when asked: no timer."""

    __slots__ = ("_clock", "base_s", "consecutive", "failures", "max_s", "pauses", "until")

    def __init__(
        self, consecutive: int, base_s: float, max_s: float, clock: Callable[[], float]
    ) -> None:
        self.consecutive = consecutive
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        self.failures = 0  # in a row
        self.pauses = 0  # in a row (no success between them)
        self.until = 0.0  # clock time the current pause ends

    def paused(self) -> bool:
        return self.until > 0.0 and self._clock() < self.until

    def succeeded(self) -> None:
        self.failures = 0
        self.pauses = 0

    def failed(self) -> float:
        """One failure; the seconds of the pause it begins, 0.0 when it begins none."""
        if self.consecutive == 0:
            return 0.0
        now = self._clock()
        if now < self.until:
            return 0.0  # a try started before the pause: already counted
        self.failures += 1
        # On probation after a pause, one failure pauses again.
        if self.failures < self.consecutive and self.pauses == 0:
            return 0.0
        seconds = min(self.max_s, self.base_s * float(2 ** min(self.pauses, 40)))
        self.failures = 0
        self.pauses += 1
        self.until = now + seconds
        return seconds


def _check(what: str, consecutive: int, base_s: float, max_s: float) -> None:
    if consecutive < 0 or base_s <= 0 or max_s < base_s:
        raise ValueError(f"bad {what} bounds: {consecutive=}, {base_s=}, {max_s=}")


class Ejection:
    """Whether mirrors to one upstream are ejected now; fed each mirror's outcome."""

    __slots__ = ("_backoff", "role", "total")

    def __init__(
        self,
        role: str,
        consecutive: int,
        base_s: float,
        max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check("ejection", consecutive, base_s, max_s)
        self.role = role
        self._backoff = Backoff(consecutive, base_s, max_s, clock)
        self.total = 0  # ejections since start

    @property
    def broken(self) -> int:
        """Broken answers in a row."""
        return self._backoff.failures

    @property
    def ejections(self) -> int:
        """Ejections in a row (no sound answer between them)."""
        return self._backoff.pauses

    @property
    def until(self) -> float:
        """Clock time the current ejection ends."""
        return self._backoff.until

    def ejected(self) -> bool:
        """Mirrors to this upstream are skipped now."""
        return self._backoff.paused()

    def outcome(self, error: str | None) -> float:
        """One mirror's outcome (its error kind, None when it answered). Returns the
        seconds of the ejection this starts, 0.0 when it starts none."""
        backoff = self._backoff
        if error not in BROKEN:
            backoff.succeeded()
            return 0.0
        seconds = backoff.failed()
        if seconds:
            self.total += 1
            logger.warning(
                "%s ejected from mirroring for %.3g s after %s broken answer(s) in a row "
                "(last: %s); ejection %d in a row",
                self.role,
                seconds,
                backoff.consecutive if backoff.pauses == 1 else 1,
                error,
                backoff.pauses,
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
        _check("discard", consecutive, base_s, max_s)
        self.consecutive = consecutive
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        # One Backoff per endpoint that outran the bound; endpoints are the route
        # matcher's, bounded (metrics.max_endpoints, then "other").
        self._by_endpoint: dict[str, Backoff] = {}

    def reads_on(self, endpoint: str) -> bool:
        """Read ``endpoint``'s answer on past the record bound, to time it."""
        backoff = self._by_endpoint.get(endpoint)
        return backoff is None or not backoff.paused()

    def ended(self, endpoint: str, within: bool) -> float:
        """A read-on answer of ``endpoint`` ended ``within`` the bound, or outran it.
        Returns the seconds of the pause this starts, 0.0 when none."""
        if within:
            self._by_endpoint.pop(endpoint, None)
            return 0.0
        if self.consecutive == 0:
            return 0.0
        backoff = self._by_endpoint.get(endpoint)
        if backoff is None:
            backoff = self._by_endpoint[endpoint] = Backoff(
                self.consecutive, self.base_s, self.max_s, self._clock
            )
        return backoff.failed()
