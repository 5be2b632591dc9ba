"""Plain values of the judgement: differences, checks, verdicts. No I/O, no aiohttp."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Check", "Difference", "Side", "Verdict", "VerdictResult"]


@dataclass(frozen=True, slots=True)
class Side:
    """One upstream's answer as recorded: what compare() looks at."""

    status: int | None
    headers: dict[str, str]  # lower-case names
    body: bytes | None
    body_truncated: bool = False
    error: str | None = None  # timeout | refused | reset | error


@dataclass(frozen=True, slots=True)
class Difference:
    """One field that differs in one exchange, and how it was judged."""

    path: str  # concrete: $.items[2].price, or "status", or "header:content-type"
    field: str  # rule-level: $.items[*].price (what counts and noise group by)
    kind: str  # value | type | missing | extra | order | length | status | header | body
    primary_value: Any
    other_value: Any
    judgement: str  # strict | tolerance
    rule: str | None = None  # e.g. "tolerance abs 0.01", "strict (default)"


class Verdict(StrEnum):
    GO = "GO"
    NO_GO = "NO_GO"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of a verdict: what was observed against what threshold."""

    name: str  # evidence | strict | tolerance | errors | latency | recording | runtime | ...
    passed: bool | None  # None: could not be decided (not enough data)
    observed: Any
    threshold: Any
    detail: str = ""
    # A failed check with blocking=False only makes the verdict INCONCLUSIVE.
    blocking: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "observed": self.observed,
            "threshold": self.threshold,
            "detail": self.detail,
            "blocking": self.blocking,
        }


@dataclass(frozen=True, slots=True)
class VerdictResult:
    run: str
    verdict: Verdict
    checks: tuple[Check, ...]
    computed_at: str = ""  # ISO 8601
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "verdict": self.verdict.value,
            "computed_at": self.computed_at,
            "checks": [c.as_dict() for c in self.checks],
            **self.extra,
        }
