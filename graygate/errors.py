"""graygate's exceptions: one small tree, used by every package.

    GraygateError
    ├── ConfigError              a configuration key has a bad value (CLI exit 2)
    ├── StoreError               anything the database layer cannot do
    │   ├── StoreUnavailable     PostgreSQL cannot be reached (CLI exit 3)
    │   ├── UnknownRun           no run by that name (CLI exit 3, HTTP 404)
    │   ├── UnknownWaiver        no waiver with that id (CLI exit 3, HTTP 404)
    │   └── WaiverConflict       the waiver cannot change so (already revoked; HTTP 409)
    └── UpstreamError            an upstream did not answer
        ├── UpstreamUnreachable  refused, reset, DNS: the client gets 502
        └── UpstreamTimeout      no answer in time: the client gets 504

Messages are one line and never carry secrets: DSNs are censored before they get here.
"""

from __future__ import annotations

from graygate.vocabulary import ErrorKind

__all__ = [
    "ConfigError",
    "GraygateError",
    "StoreBusy",
    "StoreError",
    "StoreUnavailable",
    "UnknownRun",
    "UnknownWaiver",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnreachable",
    "WaiverConflict",
    "one_line",
]


class GraygateError(Exception):
    """Base of every error graygate raises on purpose."""


class ConfigError(GraygateError):
    """A configuration value is wrong; the message names the key and the value."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class StoreError(GraygateError):
    """The database layer could not do what was asked."""


class StoreUnavailable(StoreError):
    """PostgreSQL cannot be reached, or its schema is not at the expected revision."""


class StoreBusy(StoreError):
    """The tables an operation must lock briefly stayed locked by others for too long
    (e.g. a long report query); nothing was changed: try again."""


class UnknownRun(StoreError):
    """No run has that name."""

    def __init__(self, run: str) -> None:
        self.run = run
        super().__init__(f"unknown run {run!r}")


class UnknownWaiver(StoreError):
    """No waiver has that id."""

    def __init__(self, waiver_id: int) -> None:
        self.waiver_id = waiver_id
        super().__init__(f"unknown waiver {waiver_id}")


class WaiverConflict(StoreError):
    """A waiver cannot change that way (e.g. it is already revoked)."""


class UpstreamError(GraygateError):
    """An upstream failed to answer; ``kind`` is what is recorded on the exchange."""

    kind: ErrorKind = ErrorKind.ERROR


class UpstreamUnreachable(UpstreamError):
    kind = ErrorKind.REFUSED


class UpstreamTimeout(UpstreamError):
    kind = ErrorKind.TIMEOUT


def one_line(exc: BaseException, limit: int = 200, *, fallback: str | None = None) -> str:
    """The first line of what went wrong, for a log line or an error message: a driver's own
    message (SQLAlchemy wraps it as ``orig``) in preference to the wrapper's, cut at ``limit``;
    ``fallback`` (default: ``repr(exc)``) when there is no message at all."""
    text = str(getattr(exc, "orig", None) or exc)
    lines = text.splitlines() or [repr(exc) if fallback is None else fallback]
    return lines[0][:limit]
