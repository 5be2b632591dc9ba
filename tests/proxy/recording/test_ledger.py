"""The loss ledger, with no database: counters are written through a plain callable."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import pytest
from prometheus_client import REGISTRY

from proxy.recording.ledger import QUEUE_FULL, SPILL_FULL, LossKey, LossLedger
from proxy.spill import Spill
from tests.proxy.recording.rows import rows


def dropped_metric(reason: str) -> float:
    value = REGISTRY.get_sample_value("graygate_record_exchanges_dropped_total", {"reason": reason})
    return value or 0.0


def test_losses_are_counted_per_run_and_reason() -> None:
    before = dropped_metric(QUEUE_FULL)
    ledger = LossLedger()
    assert not ledger
    ledger.lose(1, QUEUE_FULL)
    ledger.lose(1, QUEUE_FULL, 2)
    ledger.lose(2, QUEUE_FULL)
    ledger.lose(2, QUEUE_FULL, 0)  # nothing
    ledger.lose_rows(rows(1, 2) + rows(3, 1), SPILL_FULL)
    assert ledger.pending == {
        (1, QUEUE_FULL): 3,
        (2, QUEUE_FULL): 1,
        (1, SPILL_FULL): 2,
        (3, SPILL_FULL): 1,
    }
    assert ledger.dropped == {QUEUE_FULL: 4, SPILL_FULL: 3}
    assert dropped_metric(QUEUE_FULL) - before == 4


async def test_stored_counters_leave_the_ledger_and_totals_stay() -> None:
    ledger = LossLedger()
    ledger.lose(1, QUEUE_FULL, 5)
    written: list[dict[LossKey, int]] = []

    async def write(losses: Mapping[LossKey, int]) -> None:
        written.append(dict(losses))

    assert await ledger.store(write, write_timeout=5) is None
    assert written == [{(1, QUEUE_FULL): 5}] and not ledger
    assert ledger.dropped == {QUEUE_FULL: 5}
    assert await ledger.store(write, write_timeout=5) is None
    assert len(written) == 1  # nothing pending: no write


async def test_database_away_keeps_every_counter_pending() -> None:
    ledger = LossLedger()
    ledger.lose(1, QUEUE_FULL, 5)

    async def write(losses: Mapping[LossKey, int]) -> None:
        ledger.lose(1, QUEUE_FULL, 2)  # the request path goes on while we wait
        raise ConnectionRefusedError("connection refused")

    failure = await ledger.store(write, write_timeout=5)
    assert isinstance(failure, ConnectionRefusedError)
    assert ledger.pending == {(1, QUEUE_FULL): 7}


async def test_a_refused_run_costs_only_its_own_counters(caplog: pytest.LogCaptureFixture) -> None:
    ledger = LossLedger()
    ledger.lose(1, QUEUE_FULL, 5)
    ledger.lose(2, QUEUE_FULL, 3)  # run 2 was deleted meanwhile
    stored: dict[LossKey, int] = {}

    async def write(losses: Mapping[LossKey, int]) -> None:
        ledger.lose(1, SPILL_FULL)  # counted while the first write is under way
        if any(run == 2 for run, _ in losses):
            raise asyncpg.ForeignKeyViolationError("run 2 does not exist")
        stored.update(losses)

    with caplog.at_level(logging.ERROR, logger="proxy.recording.ledger"):
        assert await ledger.store(write, write_timeout=5) is None
    assert stored == {(1, QUEUE_FULL): 5}
    assert "run 2" in caplog.text and "run 2 does not exist" in caplog.text
    # What was counted during the writes is still pending, not lost with the refused run.
    assert ledger.pending == {(1, SPILL_FULL): 3}  # one per write: all, run 1, run 2


async def test_spilled_counters_are_read_back_from_the_spill(tmp_path: Path) -> None:
    ledger = LossLedger()
    assert await ledger.spill(None)  # nothing pending: trivially done
    ledger.lose(7, QUEUE_FULL, 3)
    assert not await ledger.spill(None)  # no spill: they stay
    assert ledger.pending == {(7, QUEUE_FULL): 3}
    spill = Spill(tmp_path, 1_000_000)
    assert await ledger.spill(spill)
    assert not ledger
    spill.seal()
    [path] = spill.segments()
    segment = spill.claim(path)
    assert segment is not None
    assert segment.read(100).losses == {(7, QUEUE_FULL): 3}
    segment.release()


async def test_an_unwritable_spill_keeps_the_counters(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "spill"
    not_a_dir.write_text("a file where the spill directory should be")
    ledger = LossLedger()
    ledger.lose(7, QUEUE_FULL, 3)
    assert not await ledger.spill(Spill(not_a_dir, 1_000_000))
    assert ledger.pending == {(7, QUEUE_FULL): 3}
