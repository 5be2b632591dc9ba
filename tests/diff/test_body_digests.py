"""Body sampling (``record.bodies: {sample: ...}``): an exchange left out keeps each answer's
sha256 in place of its body; the judge still compares every pair: equal digests are equal
bodies, unequal ones (with ``keep_differing: false``) make the pair ``unjudgeable``, which
the ``judgeable`` check bounds (never GO past it); the verdict says how many pairs were
judged from digests. Real rows, real workers, real aggregation; the recorder's sampling
with its own randomness."""

from __future__ import annotations

import hashlib

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import BodiesConfig, RecordConfig
from diff.compare import compare
from diff.evaluate import assess_run
from diff.worker import judge_pending
from graygate.admin.api import exchange_json
from graygate.report_html import render_exchange
from graygate.values import Answer, RecordedExchange, Verdict
from proxy.recorder import Recorder
from store.exchanges import COLUMNS, exchange_row, fetch_exchanges
from store.reports import exchange_by_trace
from store.tables import exchanges
from tests.diff.judgeseed import SMALL_VERDICT, Ex, add, matching, new_run, order, rulebook
from tests.proxy.recording.rows import BODY, record

BOOK = rulebook()
JSON = {"content-type": "application/json"}


def _digest(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


# --------------------------------------------------------------------------- the row


def test_a_left_out_exchange_keeps_digests_in_place_of_bodies() -> None:
    rec = record(1, 0)
    row = dict(zip(COLUMNS, exchange_row(rec, keep_bodies=False), strict=True))
    for side in ("primary", "canary"):
        assert row[f"{side}_body"] is None
        assert row[f"{side}_body_sha256"] == _digest(BODY)
    assert row["secondary_body_sha256"] is None  # no secondary answer
    assert row["body_digest_only"] is True
    kept = dict(zip(COLUMNS, exchange_row(rec), strict=True))
    assert kept["primary_body"] == BODY and kept["primary_body_sha256"] is None
    assert kept["body_digest_only"] is False


def _two(primary: bytes, canary: bytes, *, truncated: bool) -> RecordedExchange:
    rec = record(1, 0)
    rec.primary = Answer(200, JSON, primary, body_truncated=truncated)
    rec.canary = Answer(200, JSON, canary)
    return rec


@pytest.mark.parametrize(
    ("primary", "canary", "truncated", "keep_differing", "digests"),
    [
        (b'{"a":1}', b'{"a":2}', False, True, False),  # they differ: kept to be judged
        (b'{"a":1}', b'{"a":2}', False, False, True),  # kept only as digests
        (b'{"a":1}', b'{"a":1}', True, False, False),  # a cut body's digest is not the answer's
        (b"", b"", False, False, False),  # nothing to save
        # A canary answering an empty body differs from the primary's: kept to be judged,
        # not hidden behind the primary's digest.
        (b'{"a":1}', b"", False, True, False),
    ],
)
def test_which_bodies_are_kept(
    primary: bytes, canary: bytes, truncated: bool, keep_differing: bool, digests: bool
) -> None:
    rec = _two(primary, canary, truncated=truncated)
    values = exchange_row(rec, keep_bodies=False, keep_differing=keep_differing)
    row = dict(zip(COLUMNS, values, strict=True))
    assert row["body_digest_only"] is digests
    assert (row["primary_body"] is None) is digests
    assert (row["canary_body_sha256"] == _digest(canary)) is digests


def test_the_request_body_is_always_kept() -> None:
    rec = record(1, 0)
    rec.request_body = b'{"order": 1}'
    row = dict(zip(COLUMNS, exchange_row(rec, keep_bodies=False), strict=True))
    assert row["request_body"] == b'{"order": 1}' and row["body_digest_only"] is True


# --------------------------------------------------------------------------- the judge


def test_compare_from_digests() -> None:
    rules = BOOK.for_endpoint("GET /api/orders/{id}")
    a, b = b'{"id": 1}', b'{"id": 2}'

    def side(body: bytes, keep: bool) -> Answer:
        if keep:
            return Answer(200, JSON, body)
        return Answer(200, JSON, None, body_sha256=_digest(body))

    # Equal digests (or a kept body whose digest equals the other's): nothing differs.
    assert compare(side(a, False), side(a, False), rules) == []
    assert compare(side(a, True), side(a, False), rules) == []
    # Unequal: one body difference that cannot be judged, never a strict one.
    (d,) = compare(side(a, False), side(b, False), rules)
    assert (d.field, d.judgement) == ("body", "unjudgeable")
    assert d.primary_value == {"sha256": _digest(a).hex(), "body_kept": False}
    (d,) = compare(side(a, True), side(b, False), rules)
    assert d.judgement == "unjudgeable" and d.primary_value["body_kept"] is True
    # A status that differs is still certain.
    diffs = compare(side(a, False), Answer(500, JSON, None, body_sha256=_digest(a)), rules)
    assert [(x.field, x.judgement) for x in diffs] == [("status", "strict")]
    # A body the rules ignore is never unjudgeable.
    ignoring = rulebook({"defaults": {"ignore": ["$"]}}).for_endpoint("GET /x")
    assert compare(side(a, False), side(b, False), ignoring) == []


# --------------------------------------------------------------------------- the verdict


@pytest.mark.parametrize(("differing", "expected"), [(0, Verdict.GO), (2, Verdict.INCONCLUSIVE)])
async def test_pairs_judged_from_digests_are_counted_and_never_a_silent_go(
    engine: AsyncEngine, run_name: str, differing: int, expected: Verdict
) -> None:
    run_id = await new_run(
        engine, run_name, verdict={**SMALL_VERDICT, "max_unjudgeable_rate": 0.02}
    )
    same = [Ex(primary=order(i)) for i in range(30)]  # the canary answers the same bytes
    await add(engine, run_id, matching(20))  # bodies kept (request_id differs: ignored)
    await add(engine, run_id, same, keep_bodies=False)  # equal bodies: digests only
    if differing:
        # A strict field differs, but only the digests were kept: not judgeable.
        other = [Ex(primary=order(i), canary=order(i, status="lost")) for i in range(differing)]
        await add(engine, run_id, other, keep_bodies=False, keep_differing=False)
    await judge_pending(engine, run_name, BOOK)

    assessment = await assess_run(engine, run_name, record=False)
    (counts,) = assessment.aggregates.endpoints
    assert (counts.pairs, counts.match, counts.digest_pairs) == (50, 50, 30)
    assert (counts.unjudgeable, counts.digest_unjudgeable) == (differing, differing)
    assert counts.strict_pairs == 0  # an unequal digest is no mismatch either
    result = assessment.verdict
    check = next(c for c in result.checks if c.name == "judgeable")
    assert "30 pairs judged from body digests" in check.detail
    assert result.verdict == expected, result.checks
    if differing:
        assert f"{differing} of {50 + differing}" in check.detail
        assert "body digests differ" in check.detail


async def test_the_recorder_samples_bodies_with_its_own_randomness(
    engine: AsyncEngine, run_name: str
) -> None:
    run_id = await new_run(engine, run_name)
    config = RecordConfig(batch_size=100, bodies=BodiesConfig(sample=0.5))
    async with Recorder(engine, config) as rec:
        for i in range(400):
            assert rec.submit(record(run_id, i))
        await rec.flush()
    stored = await fetch_exchanges(engine, run_id)
    assert len(stored) == 400
    digested = [r for r in stored if r["body_digest_only"]]
    # Each exchange is kept with probability 1/2: both kinds are there (all 400 alike
    # has probability 2**-399).
    assert 0 < len(digested) < 400
    assert all(r["canary_body"] is None and r["canary_body_sha256"] for r in digested)
    kept = [r for r in stored if not r["body_digest_only"]]
    assert all(r["canary_body"] == BODY and r["canary_body_sha256"] is None for r in kept)
    # Every pair is judged: a match, from the bodies or from the digests.
    assert await judge_pending(engine, run_name, BOOK) == 400
    async with engine.connect() as conn:
        outcomes = (
            await conn.execute(
                sa.select(exchanges.c.outcome, sa.func.count())
                .where(exchanges.c.run_id == run_id)
                .group_by(exchanges.c.outcome)
            )
        ).all()
    assert dict(outcomes) == {"match": 400}
    # The API and the exchange page say the body was not kept, and show its digest.
    detail = await exchange_by_trace(engine, digested[0]["trace_id"], run=run_name)
    assert detail is not None
    shown = exchange_json(detail)["responses"]["canary"]
    assert shown["body"] is None and shown["body_sha256"] == _digest(BODY).hex()
    assert f"body not kept (record.bodies.sample): sha256 <code>{_digest(BODY).hex()}" in (
        render_exchange(detail)
    )


async def test_sample_one_keeps_every_body(engine: AsyncEngine, run_name: str) -> None:
    run_id = await new_run(engine, run_name)
    async with Recorder(engine, RecordConfig(bodies=BodiesConfig(sample=1.0))) as rec:
        for i in range(50):
            rec.submit(record(run_id, i))
        await rec.flush()
    assert not any(r["body_digest_only"] for r in await fetch_exchanges(engine, run_id))


def test_a_digest_read_back_is_written_again() -> None:
    # A replay re-records a sampled run's answers as they were read: digest, no body.
    rec = record(1, 0)
    rec.primary = Answer(200, JSON, None, body_sha256=_digest(BODY))
    row = dict(zip(COLUMNS, exchange_row(rec), strict=True))
    assert row["primary_body"] is None and row["primary_body_sha256"] == _digest(BODY)
    assert row["canary_body"] == BODY and row["canary_body_sha256"] is None
    assert row["body_digest_only"] is True
