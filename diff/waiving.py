"""Waivers applied to a run's field counts (pure: plain values in, plain values out).

A waiver accepts the canary's differences at one field of the endpoints its pattern
matches (``fnmatch`` glob over ``METHOD /path/{template}``), of one kind when it names one.
Its field is written as the rules' paths are (``$.created_at``, ``$.items[*].price``,
``$..updated_at``), or ``status``, ``body``, ``header:NAME`` for those kinds.

:func:`apply_waivers` takes the stored field counts (``graygate.values.FieldCount``) and
turns every strict or tolerance count a waiver matches into a ``waived`` one; the
``(endpoint, field, kind)`` keys it waived are then left out of the mismatch recount
(``store.aggregates.fetch_mismatch_counts``) exactly as the noise keys are. A waiver waives
field differences only: errors, latency and runtime are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any, Protocol

from diff.paths import ANY, DEEP, INDEX, KEY, Location, Path, compile_path
from graygate.values import Check, FieldCount
from graygate.vocabulary import FAILURE_JUDGEMENTS, Against, Judgement

__all__ = [
    "WaiverLike",
    "WaiverUse",
    "Waiving",
    "apply_waivers",
    "field_matches",
    "waivers_check",
]


class WaiverLike(Protocol):
    """What matching needs of a waiver (``store.waivers.WaiverRow`` is one)."""

    @property
    def id(self) -> int: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def field(self) -> str: ...
    @property
    def kind(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class WaiverUse:
    """One waiver in one evaluation: what it waived."""

    id: int
    endpoint: str
    field: str
    kind: str | None
    source: str
    differences: int = 0  # difference rows waived
    exchanges: int = 0  # exchanges with a waived difference (summed per field)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "field": self.field,
            "kind": self.kind,
            "source": self.source,
            "differences": self.differences,
            "exchanges": self.exchanges,
        }


@dataclass(frozen=True, slots=True)
class Waiving:
    """The field counts with the waivers applied, the keys waived, and each waiver's use."""

    fields: tuple[FieldCount, ...]
    keys: frozenset[tuple[str, str, str]] = frozenset()
    uses: tuple[WaiverUse, ...] = field(default=())

    @property
    def differences(self) -> int:
        return sum(u.differences for u in self.uses)


@lru_cache(maxsize=1024)
def _compiled(text: str) -> Path | None:
    try:
        return compile_path(text)
    except ValueError:
        return None


@lru_cache(maxsize=16_384)
def _field_location(stored: str) -> Location | None:
    """A stored rule-level field (``$.items[*].price``) as a location (``[*]`` an index)."""
    path = _compiled(stored)
    if path is None:
        return None
    out: list[str | int] = []
    for kind, value in path.steps:
        if kind == KEY:
            out.append(str(value))
        elif kind in (INDEX, ANY):
            out.append(0)
        elif kind == DEEP:
            return None
    return tuple(out)


def field_matches(pattern: str, stored: str) -> bool:
    """Whether a waiver's field ``pattern`` names the stored field ``stored``."""
    if pattern == stored:
        return True
    if not pattern.startswith("$") or not stored.startswith("$"):
        return False
    path = _compiled(pattern)
    location = _field_location(stored)
    return path is not None and location is not None and path.matches(location)


def _matches(w: WaiverLike, f: FieldCount) -> bool:
    return (
        fnmatchcase(f.endpoint, w.endpoint)
        and (w.kind is None or w.kind == f.kind)
        and field_matches(w.field, f.field)
    )


def apply_waivers(
    fields: Iterable[FieldCount],
    waivers: Sequence[WaiverLike],
    *,
    sources: dict[int, str] | None = None,
) -> Waiving:
    """Judge ``waived`` every canary strict/tolerance count a waiver matches (the first, by
    id, takes the credit), merging counts that then share a key."""
    ordered = sorted(waivers, key=lambda w: w.id)
    uses: dict[int, WaiverUse] = {
        w.id: WaiverUse(w.id, w.endpoint, w.field, w.kind, (sources or {}).get(w.id, ""))
        for w in ordered
    }
    merged: dict[tuple[str, str, str, str, str], FieldCount] = {}
    keys: set[tuple[str, str, str]] = set()
    for f in fields:
        if f.against == Against.CANARY and f.judgement in FAILURE_JUDGEMENTS:
            hit = next((w for w in ordered if _matches(w, f)), None)
            if hit is not None:
                u = uses[hit.id]
                uses[hit.id] = replace(
                    u,
                    differences=u.differences + f.differences,
                    exchanges=u.exchanges + f.exchanges,
                )
                keys.add((f.endpoint, f.field, f.kind))
                f = replace(f, judgement=Judgement.WAIVED.value)
        k = (f.endpoint, f.field, f.against, f.judgement, f.kind)
        if k in merged:
            m = merged[k]
            f = replace(
                m, exchanges=m.exchanges + f.exchanges, differences=m.differences + f.differences
            )
        merged[k] = f
    return Waiving(tuple(merged.values()), frozenset(keys), tuple(uses.values()))


def waivers_check(waiving: Waiving) -> Check:
    """The verdict's ``waivers`` line: informational, never blocking, never failing."""
    n = len(waiving.uses)
    total = waiving.differences
    return Check(
        name="waivers",
        passed=True,
        observed={
            "applied": n,
            "differences": total,
            "waivers": [u.as_dict() for u in waiving.uses],
        },
        threshold=None,
        detail=f"{n:,} applied, {total:,} difference{'s' if total != 1 else ''} waived",
        blocking=False,
    )
