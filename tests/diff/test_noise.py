"""Diffy's noise rule and its edge cases."""

from __future__ import annotations

import pytest

from config.schema import NoiseConfig
from diff.noise import EndpointTotals, FieldCounts, is_noise, judge_noise, noise_fields

EP = "GET /api/orders/{id}"
DEFAULT = NoiseConfig()  # relative 0.2, absolute 0.0003


def one(
    canary: int,
    secondary: int,
    canary_n: int = 1000,
    secondary_n: int = 1000,
    cfg: NoiseConfig = DEFAULT,
) -> bool:
    [f] = judge_noise(
        [FieldCounts(EP, "$.x", canary, secondary)],
        {EP: EndpointTotals(EP, canary_n, secondary_n)},
        cfg,
    )
    return f.is_noise


def test_field_differing_as_often_as_the_secondary_is_noise() -> None:
    # a timestamp: differs everywhere, against the canary and the secondary alike
    assert one(1000, 1000)
    assert one(510, 500)  # 2 % more: within the 20 % relative margin


def test_field_clearly_above_the_secondary_is_real() -> None:
    assert not one(700, 500)  # 40 % more, 20 points more
    assert not one(300, 0)  # the secondary never differs here


def test_both_margins_must_be_exceeded() -> None:
    # relative exceeded (doubled) but the absolute margin not: noise
    assert one(2, 1, 100_000, 100_000, NoiseConfig(relative=0.2, absolute=0.001))
    # absolute exceeded but relative not (0.55 vs 0.5: +10 %): noise
    assert one(550, 500)
    # exactly at the relative margin is not beyond it: noise
    assert one(600, 500, cfg=NoiseConfig(relative=0.2, absolute=0.0))
    assert not one(601, 500, cfg=NoiseConfig(relative=0.2, absolute=0.0))


def test_a_field_that_never_differs_by_nature_is_never_noise() -> None:
    # Unlike Diffy, a rare difference is not waved through when the secondary never differs
    # there: a strict field must match 100% of the time.
    assert not one(1, 0, 1000, 1000)  # 0.1 %
    assert not one(1, 0, 10_000, 10_000)  # 0.01 %, under the absolute margin
    assert not one(1, 0, 10_000, 10_000, NoiseConfig(relative=0.2, absolute=0.0))


def test_canary_below_the_secondary_is_noise() -> None:
    assert one(100, 400)
    assert one(0, 5)


def test_no_secondary_data_is_never_noise() -> None:
    [f] = judge_noise([FieldCounts(EP, "$.x", 1000)], [EndpointTotals(EP, 1000, 0)])
    assert f.noise_rate is None and not f.is_noise and f.canary_rate == 1.0
    # an endpoint with no totals at all
    [f] = judge_noise([FieldCounts("GET /other", "$.x", 3, 3)], {})
    assert f.noise_rate is None and not f.is_noise and f.canary_rate == 0.0
    assert not is_noise(1.0, None, relative=0.2, absolute=0.0)


def test_rates_use_their_own_denominators() -> None:
    # 2000 exchanges against the canary, only 500 of them also had a secondary
    [f] = judge_noise(
        [FieldCounts(EP, "$.updated_at", canary=2000, secondary=500)],
        [EndpointTotals(EP, canary_compared=2000, secondary_compared=500)],
    )
    assert (f.canary_rate, f.noise_rate, f.is_noise) == (1.0, 1.0, True)
    assert f.as_dict()["noise_compared"] == 500


def test_several_fields_and_endpoints() -> None:
    totals = [EndpointTotals(EP, 1000, 1000), EndpointTotals("GET /api/users/{id}", 50, 0)]
    fields = [
        FieldCounts(EP, "$.updated_at", 1000, 990),
        FieldCounts(EP, "$.total", 40, 0),
        FieldCounts("GET /api/users/{id}", "$.updated_at", 50, 0),
    ]
    result = {(f.endpoint, f.field): f.is_noise for f in judge_noise(fields, totals)}
    assert result == {
        (EP, "$.updated_at"): True,
        (EP, "$.total"): False,
        ("GET /api/users/{id}", "$.updated_at"): False,
    }


@pytest.mark.parametrize("compared", [0, -1])
def test_noise_fields_per_endpoint(compared: int) -> None:
    canary = {"$.updated_at": 100, "$.total": 12}
    secondary = {"$.updated_at": 98, "$.session": 4}
    found = noise_fields(canary, secondary, 100)
    assert set(found) == {"$.updated_at", "$.session"}
    assert found["$.updated_at"] == (1.0, 0.98)
    assert noise_fields(canary, secondary, compared) == {}
    # canary over all 400 pairs, the secondary over the 100 that had one
    found = noise_fields({"$.updated_at": 400}, {"$.updated_at": 100}, 100, canary_compared=400)
    assert found == {"$.updated_at": (1.0, 1.0)}
