"""The local spill: rows and loss counters round-trip, the bound holds, segments are claimed
by one replayer at a time, and a write cut short by a crash costs only its own line."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path

from graygate.values import Answer, RecordedExchange
from proxy.spill import SEGMENT_SUFFIX, Spill
from store.exchanges import COLUMNS, Row, exchange_row


def rows(n: int, *, run_id: int = 7, body: bytes = b"\x00\xff{}") -> list[Row]:
    return [
        exchange_row(
            RecordedExchange(
                run_id=run_id,
                trace_id=uuid.uuid4().hex,
                span_id=os.urandom(8).hex(),
                received_at=datetime(2026, 11, 27, 12, 0, 0, i, tzinfo=UTC),
                endpoint="POST /api/orders",
                method="POST",
                path="/api/orders",
                query="",
                request_headers={"content-type": "application/json"},
                request_body=body,
                request_body_truncated=False,
                gray_label=None,
                served_by="primary",
                primary=Answer(201, {"x": "1"}, body, True, 1.5),
                canary=Answer(None, {}, None, False, 2000.0, "timeout"),
            )
        )
        for i in range(n)
    ]


def test_rows_and_losses_round_trip(tmp_path: Path) -> None:
    spill = Spill(tmp_path / "spill", 10_000_000)
    written = rows(25)
    assert spill.append(written[:10]) == 10
    assert spill.append_losses({(7, "queue_full"): 3, (8, "spill_full"): 1})
    assert spill.append(written[10:]) == 15
    assert spill.append_losses({(7, "queue_full"): 2})
    assert spill.segments() == []  # the segment being written is not for replay yet
    spill.seal()
    [path] = spill.segments()
    assert spill.size == path.stat().st_size
    assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)

    segment = spill.claim(path)
    assert segment is not None and segment.columns == COLUMNS
    got: list[Row] = []
    while True:
        chunk = segment.read(10)
        got.extend(chunk.rows)
        segment.advance(chunk)
        if chunk.eof:
            break
    assert got == written
    assert segment.losses == {(7, "queue_full"): 5, (8, "spill_full"): 1}
    assert segment.corrupt == 0
    spill.remove(segment)
    assert spill.segments() == [] and spill.size == 0


def test_read_does_not_advance_until_told(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 10_000_000)
    written = rows(5)
    spill.append(written)
    spill.seal()
    segment = spill.claim(spill.segments()[0])
    assert segment is not None
    first = segment.read(3)
    assert segment.read(3).rows == first.rows == written[:3]  # a failed write: read again
    segment.advance(first)
    assert segment.read(3).rows == written[3:]
    segment.release()


def test_bound_is_kept(tmp_path: Path) -> None:
    batch = rows(100, body=b"x" * 1000)
    spill = Spill(tmp_path, 30_000)
    n = spill.append(batch)
    assert 0 < n < 100
    assert spill.size <= 30_000
    assert spill.append(batch[n:]) == 0  # full
    assert spill.append_losses({(7, "spill_full"): 100 - n})  # counters always fit
    spill.seal()
    segment = spill.claim(spill.segments()[0])
    assert segment is not None
    chunk = segment.read(1000)
    assert chunk.rows == batch[:n] and chunk.losses == {(7, "spill_full"): 100 - n}
    segment.release()
    assert Spill(tmp_path, 0).append(batch) == 0  # disabled


def test_segments_rotate_oldest_first(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 10_000_000, segment_bytes=2_000)
    written = rows(12)
    for row in written:
        spill.append([row])
    spill.seal()
    paths = spill.segments()
    assert len(paths) > 1 and paths == sorted(paths)
    got: list[Row] = []
    for path in paths:
        segment = spill.claim(path)
        assert segment is not None
        got.extend(segment.read(100).rows)
        spill.remove(segment)
    assert got == written


def test_one_replayer_at_a_time(tmp_path: Path) -> None:
    writer = Spill(tmp_path, 10_000_000)
    writer.append(rows(3))
    other = Spill(tmp_path, 10_000_000)  # another process sharing the directory
    [current] = other.segments()
    assert other.claim(current) is None  # still being written (locked)
    writer.seal()
    first = other.claim(current)
    assert first is not None
    assert writer.claim(current) is None  # claimed by the other
    other.remove(first)
    assert writer.claim(current) is None  # gone
    assert writer.segments() == []


def test_torn_last_line_costs_only_itself(tmp_path: Path) -> None:
    spill = Spill(tmp_path, 10_000_000)
    written = rows(4)
    spill.append(written)
    spill.seal()
    [path] = spill.segments()
    with open(path, "ab") as fh:  # a crash in the middle of appending the next row
        fh.write(b'[7,"abc",')
    segment = Spill(tmp_path, 10_000_000).claim(path)
    assert segment is not None
    chunk = segment.read(100)
    assert chunk.rows == written and chunk.eof and chunk.corrupt == 1


def test_existing_segments_are_counted_and_unreadable_set_aside(tmp_path: Path) -> None:
    first = Spill(tmp_path, 10_000_000)
    first.append(rows(3))
    first.close()
    junk = tmp_path / f"00000000000000000000-1-junk{SEGMENT_SUFFIX}"
    junk.write_bytes(b"not a spill\n")
    reopened = Spill(tmp_path, 10_000_000)
    reopened.open()
    total = sum(p.stat().st_size for p in tmp_path.glob(f"*{SEGMENT_SUFFIX}"))
    assert reopened.size == total
    assert reopened.segments()[0] == junk  # oldest first
    segment = reopened.claim(junk)
    assert segment is not None
    chunk = segment.read(10)
    assert chunk.eof and not chunk.rows and not segment.readable
    target = reopened.set_aside(segment)
    assert target.exists() and not junk.exists()
    assert len(reopened.segments()) == 1
