"""Spilling rows and replaying the spill, with no database: rows are written through a
plain callable that keeps them, unique by key as the exchanges table is."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from proxy.recording.ledger import (
    DATABASE_UNAVAILABLE,
    QUEUE_FULL,
    SPILL_ERROR,
    SPILL_FULL,
    LossKey,
    LossLedger,
)
from proxy.recording.spilling import Replayer, SpillWriter
from proxy.spill import SEGMENT_SUFFIX, Spill
from store.exchanges import Row, WriteResult
from tests.proxy.recording.rows import rows


class Table:
    """Where replayed rows go: unique by (run, trace, span); segments' losses added once."""

    def __init__(self) -> None:
        self.rows: dict[tuple[object, ...], Row] = {}
        self.writes: list[int] = []
        self.losses: dict[LossKey, int] = {}
        self.segments: set[str] = set()
        self.fail_next = 0  # how many writes fail (the database is away)
        self.results: list[tuple[WriteResult, int]] = []

    async def write_rows(self, batch: list[Row], columns: tuple[str, ...]) -> WriteResult:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionRefusedError("connection refused")
        self.writes.append(len(batch))
        key = [columns.index(c) for c in ("run_id", "trace_id", "span_id")]
        result = WriteResult(copies=1)
        for row in batch:
            k = tuple(row[i] for i in key)
            if k in self.rows:
                result.duplicates += 1
            else:
                self.rows[k] = row
                result.inserted += 1
        return result

    async def add_losses(self, name: str, losses: Mapping[LossKey, int]) -> bool:
        if name in self.segments:
            return False
        self.segments.add(name)
        for key, n in losses.items():
            self.losses[key] = self.losses.get(key, 0) + n
        return True

    def count(self, result: WriteResult, run_idx: int) -> None:
        self.results.append((result, run_idx))

    def replayer(self, spill: Spill, chunk_rows: int) -> Replayer:
        return Replayer(
            spill,
            chunk_rows=chunk_rows,
            write_rows=self.write_rows,
            add_losses=self.add_losses,
            count=self.count,
        )


async def replay_all(replayer: Replayer, steps: int = 100) -> None:
    for _ in range(steps):  # bounded
        if not await replayer.step():
            return
    raise AssertionError("replay did not finish")


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))


def corrupt_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.corrupt"))


async def test_no_spill_counts_database_unavailable() -> None:
    ledger = LossLedger()
    assert await SpillWriter(None, ledger).write(rows(4, 3)) == 0
    assert ledger.pending == {(4, DATABASE_UNAVAILABLE): 3}


async def test_rows_past_the_bound_are_counted_spill_full(tmp_path: Path) -> None:
    ledger = LossLedger()
    spill = Spill(tmp_path, 5_000)
    written = await SpillWriter(spill, ledger).write(rows(4, 50))
    assert 0 < written < 50
    assert spill.size <= 5_000
    assert ledger.pending == {(4, SPILL_FULL): 50 - written}


async def test_an_unwritable_spill_counts_spill_error(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "spill"
    not_a_dir.write_text("not a directory")
    ledger = LossLedger()
    assert await SpillWriter(Spill(not_a_dir, 1_000_000), ledger).write(rows(4, 3)) == 0
    assert ledger.pending == {(4, SPILL_ERROR): 3}


async def test_replay_stores_rows_in_chunks_then_losses_then_deletes(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 10_000_000)
    spilled = rows(1, 25)
    spill.append(spilled[:12])
    spill.append_losses({(1, QUEUE_FULL): 4})
    spill.append(spilled[12:])
    table = Table()
    replayer = table.replayer(spill, chunk_rows=10)
    assert replayer.due(0.0)
    await replay_all(replayer)
    assert table.rows == {}  # the segment being written is not replayed
    assert not replayer.due(0.0)  # until asked, or the rescan interval has passed

    replayer.database_back()
    await replayer.seal_if_needed()
    await replay_all(replayer)
    assert table.writes == [10, 10, 5]
    assert sorted(table.rows.values()) == sorted(spilled)
    assert table.losses == {(1, QUEUE_FULL): 4}
    assert [r.inserted for r, _ in table.results] == [10, 10, 5]
    assert {run_idx for _, run_idx in table.results} == {0}
    assert segment_files(tmp_path) == [] and spill.size == 0


async def test_a_failed_write_is_retried_from_the_same_chunk(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 10_000_000)
    spilled = rows(1, 30)
    spill.append(spilled)
    spill.append_losses({(1, QUEUE_FULL): 2})
    spill.seal()
    table = Table()
    replayer = table.replayer(spill, chunk_rows=10)
    assert await replayer.step()
    table.fail_next = 1
    with pytest.raises(ConnectionRefusedError):
        await replayer.step()
    assert replayer.due(0.0)  # the claimed segment waits
    await replay_all(replayer)
    assert len(table.rows) == 30 and table.writes == [10, 10, 10]
    assert table.losses == {(1, QUEUE_FULL): 2}
    assert segment_files(tmp_path) == []


async def test_a_segment_replayed_twice_adds_nothing_twice(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 10_000_000)
    spill.append(rows(1, 8))
    spill.append_losses({(1, QUEUE_FULL): 3})
    spill.seal()
    [path] = segment_files(tmp_path)
    copy = path.read_bytes()
    table = Table()
    await replay_all(table.replayer(spill, chunk_rows=5))
    path.write_bytes(copy)  # a crash after the last commit, before the file was deleted
    await replay_all(table.replayer(spill, chunk_rows=5))
    assert len(table.rows) == 8
    assert sum(r.duplicates for r, _ in table.results) == 8
    assert table.losses == {(1, QUEUE_FULL): 3}
    assert segment_files(tmp_path) == []


async def test_an_unreadable_segment_is_set_aside(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 10_000_000)
    (tmp_path / f"00000000000000000001-1-abc{SEGMENT_SUFFIX}").write_bytes(b"not a spill\n")
    table = Table()
    await replay_all(table.replayer(spill, chunk_rows=5))
    assert segment_files(tmp_path) == []
    assert [p.name for p in corrupt_files(tmp_path)] == [
        f"00000000000000000001-1-abc{SEGMENT_SUFFIX}.corrupt"
    ]
    assert table.rows == {}


async def test_release_leaves_a_half_replayed_segment_for_the_next(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 10_000_000)
    spill.append(rows(1, 20))
    spill.seal()
    table = Table()
    first = table.replayer(spill, chunk_rows=10)
    assert await first.step()
    await first.release()
    await replay_all(table.replayer(spill, chunk_rows=10))
    assert len(table.rows) == 20 and segment_files(tmp_path) == []


def test_chunk_rows_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chunk_rows"):
        Table().replayer(Spill(tmp_path, 1), chunk_rows=0)


async def test_to_thread_calls_do_not_block_the_loop(tmp_path: Path) -> None:
    # The writer runs on the event loop: a spill write must leave it free for the requests.
    spill = Spill(tmp_path, 10_000_000)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    try:
        await SpillWriter(spill, LossLedger()).write(rows(1, 200))
    finally:
        ticker.cancel()
    assert ticks > 0
