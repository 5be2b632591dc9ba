"""One exchange in flight, and the rule that records it exactly once.

An :class:`Exchange` is what the record is built from (``proxy.recording.building``): the
request as it was sent upstream and what each side answered (``proxy.capture.Capture``).
Plain values only: no aiohttp objects, no futures, no callbacks.

Two halves fill it and end in either order: the serving side (the handler: the client has
its answer, or its request broke off) and, when one was started, the mirror (every target's
answer or error is in). :class:`Completion` hands the exchange on once, when the last of
the two ends:

- mirror skipped (or none started): recorded when the serving side ends;
- mirror first: recorded when the serving side ends, with the mirror's answers;
- served first: recorded when the mirror ends (a timed-out target's capture says
  ``timeout``: the mirror bounds itself by ``mirror.timeout_ms``);
- a mirror that never ends (cancelled when the app's drain gives up on it) leaves the
  exchange unrecorded: its record would lack the side it waited for.

A half that ends twice, or a mirror started after the serving side ended, is a bug: it
raises rather than record twice or too early.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from proxy.route_match import UNMATCHED, Route

if TYPE_CHECKING:
    from proxy.capture import Capture
    from proxy.tagging import Tags

__all__ = ["Completion", "Exchange"]


class Exchange:
    """One request in flight: what the record will be built from."""

    __slots__ = (
        "answered_at",
        "captures",
        "headers",
        "host",
        "label",
        "method",
        "mirror_skipped",
        "path",
        "query",
        "received_at",
        "request",
        "request_encoding",
        "request_type",
        "route",
        "served_by",
        "tags",
    )

    def __init__(
        self,
        *,
        received_at: float,
        tags: Tags,
        label: str,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        served_by: str,
        host: str | None = None,
        route: Route = UNMATCHED,
    ) -> None:
        self.received_at = received_at  # time.time()
        self.tags = tags
        self.label = label
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # as sent upstream (before the shadow mark)
        self.host = host  # the client's Host header
        self.served_by = served_by
        self.request: Capture | None = None  # the request body: bounded copy, still encoded
        self.request_encoding: str | None = None  # the request's Content-Encoding
        self.request_type: str | None = None  # the request's Content-Type
        self.mirror_skipped: str | None = None
        self.route = route  # the endpoint template, for metrics, spans and the access log
        self.answered_at: float | None = None  # time.time() when the client had its answer
        self.captures: dict[str, Capture] = {}  # role -> what it answered


_SERVING: Final = 1
_MIRROR: Final = 2


class Completion:
    """Hands ``exchange`` to ``record`` exactly once: when the serving side has ended and
    so has the mirror, if one was started (:meth:`mirror_started`, before the serving side
    ends)."""

    __slots__ = ("_record", "_waiting", "exchange")

    def __init__(self, exchange: Exchange, record: Callable[[Exchange], None]) -> None:
        self.exchange = exchange
        self._record = record
        self._waiting = _SERVING  # the halves not ended yet

    def mirror_started(self) -> None:
        """A mirror of the exchange is on its way: the record waits for it too."""
        if self._waiting != _SERVING:
            raise RuntimeError(
                f"exchange {self.exchange.tags.trace_id}: a mirror can start once, and only "
                "while the serving side runs"
            )
        self._waiting = _SERVING | _MIRROR

    def served(self) -> None:
        """The serving side has ended (answered, failed, or the client broke off)."""
        self._end(_SERVING, "serving side")

    def mirrored(self) -> None:
        """The mirror has ended: every target's answer or error is in the exchange."""
        self._end(_MIRROR, "mirror")

    def _end(self, half: int, name: str) -> None:
        if not self._waiting & half:
            raise RuntimeError(
                f"exchange {self.exchange.tags.trace_id}: its {name} ended twice, or had not "
                "started"
            )
        self._waiting &= ~half
        if not self._waiting:
            self._record(self.exchange)
