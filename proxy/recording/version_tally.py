"""The versions the answers name in the ``versions.header`` response header, tallied per
run, side and version between two flushes to ``run_versions`` (``store.run_versions``).

The recorder notes each exchange as it turns it into a row, and stores the tally with the
loss counters; a tally that cannot be stored (database away) is kept for the next flush.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC

from graygate.values import RecordedExchange
from graygate.vocabulary import Role
from store.run_versions import MAX_VERSION_CHARS, VersionKey, VersionSeen

__all__ = ["VersionTally"]

_SIDES = (Role.PRIMARY, Role.CANARY, Role.SECONDARY)


class VersionTally:
    """``note(record)`` for each exchange; ``take()`` what to store, ``restore()`` it back
    when storing failed."""

    def __init__(self, header: str) -> None:
        self.header = header.lower()  # recorded header names are lower case
        self._seen: dict[VersionKey, VersionSeen] = {}

    def __bool__(self) -> bool:
        return bool(self._seen)

    def note(self, record: RecordedExchange) -> None:
        for role in _SIDES:
            answer = getattr(record, role.value)
            if answer is None or not answer.headers:
                continue
            value = answer.headers.get(self.header)
            if value is None:
                continue
            version = str(value).strip()[:MAX_VERSION_CHARS]
            if not version:
                continue
            when = record.received_at
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            self.restore({(record.run_id, role.value, version): VersionSeen(1, when, when)})

    def take(self) -> dict[VersionKey, VersionSeen]:
        seen, self._seen = self._seen, {}
        return seen

    def restore(self, seen: Mapping[VersionKey, VersionSeen]) -> None:
        for key, s in seen.items():
            mine = self._seen.get(key)
            if mine is None:
                self._seen[key] = s
            else:
                mine.add(s)
