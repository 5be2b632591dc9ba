"""Database up/down, probe and backoff, with no database: the probe is a plain callable."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from proxy.recording.health import DatabaseHealth


def gauge() -> float | None:
    return REGISTRY.get_sample_value("graygate_record_database_up")


async def _ok() -> None:
    return None


async def _refused() -> None:
    raise ConnectionRefusedError("connection refused")


def test_backoff_doubles_from_first_up_to_max() -> None:
    health = DatabaseHealth(_ok, first_backoff=0.25, max_backoff=2.0)
    assert health.up and gauge() == 1
    assert health.mark_down(100.0)  # was up
    assert not health.up and gauge() == 0
    delays = [health.probe_at - 100.0]
    for _ in range(6):
        assert not health.mark_down(100.0)  # already down
        delays.append(health.probe_at - 100.0)
    assert delays == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0]


def test_one_probe_at_a_time_and_only_when_due() -> None:
    health = DatabaseHealth(_ok, first_backoff=1.0, max_backoff=8.0)
    assert not health.claim_probe(0.0)  # up: nothing to probe
    health.mark_down(10.0)
    assert not health.claim_probe(10.5)  # not due yet
    assert health.claim_probe(11.0)
    assert not health.claim_probe(11.0)  # one is running


async def test_a_failed_probe_backs_off_a_successful_one_brings_it_back() -> None:
    answers = [_refused, _refused, _ok]

    async def ping() -> None:
        await answers.pop(0)()

    health = DatabaseHealth(ping, first_backoff=1.0, max_backoff=60.0)
    health.mark_down(0.0)
    assert health.claim_probe(1.0)
    assert not await health.probe()
    assert not health.up and gauge() == 0
    first_retry = health.probe_at
    assert health.claim_probe(first_retry)
    assert not await health.probe()
    assert health.probe_at > first_retry
    assert health.claim_probe(health.probe_at)
    assert await health.probe()
    assert health.up and gauge() == 1 and answers == []
    # Down again: the backoff starts from the first step, not where it stopped.
    health.mark_down(500.0)
    assert health.probe_at == 501.0


def test_bad_backoff_is_refused() -> None:
    with pytest.raises(ValueError, match="backoff"):
        DatabaseHealth(_ok, first_backoff=5.0, max_backoff=1.0)
