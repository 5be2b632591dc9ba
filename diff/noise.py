"""Noise cancellation (Diffy's rule), pure: which differing fields differ by nature.

A secondary is a second instance of the primary. Where primary and secondary already
disagree on a field (a timestamp, a random id, an order that is not deterministic), the
canary disagreeing too says nothing about the canary. Per (endpoint, field, kind of
difference) -- a field whose *value* differs by nature is noise for value differences only;
the canary dropping it, adding it, or changing its type is judged as usual:

    canary_rate = exchanges where primary and canary differ in the field
                  / exchanges compared primary-vs-canary
    noise_rate  = exchanges where primary and secondary differ in the field
                  / exchanges compared primary-vs-secondary (only those with a secondary)

A field is noise only when the secondary shows it differing (``noise_rate > 0``) and the
canary does not exceed that rate by BOTH margins; it is a real difference when::

    noise_rate is None or noise_rate == 0
    or (canary_rate - noise_rate > absolute and canary_rate / noise_rate - 1 > relative)

A field with no secondary data (no exchange of that endpoint had a secondary recorded), or
that never differed between primary and secondary, is never noise: there is nothing to
cancel it against, and a strict field must match 100% however rare its difference. (Unlike
Diffy, no absolute margin is granted at ``noise_rate == 0``.) The verdict
(``diff.verdict.find_noise``) also requires ``compare.noise.min_secondary_pairs`` pairs
with a secondary on an endpoint before any of its fields can be noise; below that the
endpoint's noise is "not measurable". The diff worker marks one exchange's canary
difference as noise only when the secondary differs at the same field with the same kind
of difference (value, type, missing, extra, order, length).

Counts should be counts of exchanges (``COUNT(DISTINCT exchange_id)``), not of Difference
rows: one exchange may differ in ``$.items[*].price`` at three indexes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from config.schema import NoiseConfig

__all__ = [
    "EndpointTotals",
    "FieldCounts",
    "FieldNoise",
    "is_noise",
    "judge_noise",
    "noise_fields",
]


@dataclass(frozen=True, slots=True)
class FieldCounts:
    """How many exchanges differ in one field, against the canary and the secondary."""

    endpoint: str
    field: str
    canary: int  # exchanges where primary and canary differ in this field
    secondary: int = 0  # exchanges where primary and secondary differ in this field
    kind: str = ""  # the kind of difference counted (value, type, missing...)


@dataclass(frozen=True, slots=True)
class EndpointTotals:
    """How many exchanges of one endpoint were compared."""

    endpoint: str
    canary_compared: int  # primary vs canary
    secondary_compared: int = 0  # primary vs secondary (exchanges with a secondary only)


@dataclass(frozen=True, slots=True)
class FieldNoise:
    """The noise judgement of one field."""

    endpoint: str
    field: str
    canary_count: int
    canary_compared: int
    canary_rate: float
    noise_count: int
    noise_compared: int
    noise_rate: float | None  # None: no secondary data for this endpoint
    is_noise: bool
    kind: str = ""  # noise for this kind of difference only

    def as_dict(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "field": self.field,
            "kind": self.kind,
            "canary_count": self.canary_count,
            "canary_compared": self.canary_compared,
            "canary_rate": self.canary_rate,
            "noise_count": self.noise_count,
            "noise_compared": self.noise_compared,
            "noise_rate": self.noise_rate,
            "is_noise": self.is_noise,
        }


def is_noise(
    canary_rate: float, noise_rate: float | None, *, relative: float, absolute: float
) -> bool:
    """Diffy's rule for one field. A field with no secondary data (``noise_rate`` None), or
    that never differed between primary and secondary (``noise_rate`` 0), is never noise:
    with no evidence that the field differs by nature, every canary difference in it is
    real, however rare (a strict field must match 100%)."""
    if noise_rate is None or noise_rate == 0:
        return False
    real = canary_rate - noise_rate > absolute and canary_rate / noise_rate - 1 > relative
    return not real


def judge_noise(
    fields: Iterable[FieldCounts],
    totals: Mapping[str, EndpointTotals] | Iterable[EndpointTotals],
    config: NoiseConfig | None = None,
) -> list[FieldNoise]:
    """Judge every field; ``totals`` by endpoint (a mapping or an iterable of totals).

    An endpoint absent from ``totals`` counts as compared zero times (rates 0, and no
    secondary data, so never noise).
    """
    cfg = config or NoiseConfig()
    if isinstance(totals, Mapping):
        by_endpoint = dict(totals)
    else:
        by_endpoint = {t.endpoint: t for t in totals}
    out: list[FieldNoise] = []
    for f in fields:
        t = by_endpoint.get(f.endpoint)
        canary_n = t.canary_compared if t is not None else 0
        noise_n = t.secondary_compared if t is not None else 0
        canary_rate = f.canary / canary_n if canary_n > 0 else 0.0
        noise_rate = f.secondary / noise_n if noise_n > 0 else None
        out.append(
            FieldNoise(
                endpoint=f.endpoint,
                field=f.field,
                canary_count=f.canary,
                canary_compared=canary_n,
                canary_rate=canary_rate,
                noise_count=f.secondary,
                noise_compared=noise_n,
                noise_rate=noise_rate,
                is_noise=is_noise(
                    canary_rate, noise_rate, relative=cfg.relative, absolute=cfg.absolute
                ),
                kind=f.kind,
            )
        )
    return out


def noise_fields(
    canary: Mapping[str, int],
    secondary: Mapping[str, int],
    secondary_compared: int,
    config: NoiseConfig | None = None,
    *,
    canary_compared: int | None = None,
) -> dict[str, tuple[float, float]]:
    """The noise fields of ONE endpoint: ``{field: (canary_rate, noise_rate)}``.

    ``canary`` and ``secondary`` map fields to differing-exchange counts; ``canary_compared``
    (default: ``secondary_compared``, i.e. the canary rate is taken over the exchanges that
    also had a secondary) and ``secondary_compared`` are the denominators.
    """
    cfg = config or NoiseConfig()
    c_n = secondary_compared if canary_compared is None else canary_compared
    if secondary_compared <= 0:
        return {}
    out: dict[str, tuple[float, float]] = {}
    for field in sorted(set(canary) | set(secondary)):
        c_rate = canary.get(field, 0) / c_n if c_n > 0 else 0.0
        s_rate = secondary.get(field, 0) / secondary_compared
        if is_noise(c_rate, s_rate, relative=cfg.relative, absolute=cfg.absolute):
            out[field] = (c_rate, s_rate)
    return out
