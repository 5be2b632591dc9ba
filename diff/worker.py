"""Diff workers: claim unjudged exchanges, compare them under the rules, store the result.

One unit of work is :func:`judge_batch`: in ONE transaction it claims up to ``batch_size``
of the run's unjudged exchanges (``FOR UPDATE SKIP LOCKED``), compares each (pure, in a
thread so the event loop stays free), and stores the differences and every exchange's
outcome. Workers in any number of processes and hosts judge each exchange exactly once; a
worker that dies mid-batch loses nothing (its transaction rolls back and the rows are
claimable again).

How an exchange is judged (the primary side is always the primary's answer, also when the
canary served the client):

- ``skipped``: the mirror was skipped, or a side left no trace: nothing to compare;
- ``error``: the primary or the canary failed in transport (timeout, refused, reset), or the
  comparison itself failed;
- otherwise primary vs canary, and primary vs secondary when a secondary answered. A canary
  difference at a field where the secondary differs too in the same exchange is judged
  ``noise``; ``match`` (no difference), ``noise_only`` (only noise) or ``differ``.

Running workers: ``async with run_workers(engine, run_id, rulebook, count=2): ...`` (an
aiohttp ``cleanup_ctx`` wraps it in two lines), or :func:`worker_loop` as one task;
:func:`judge_pending` drains a run once (tests, the demo).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from config.schema import CompareConfig
from diff.compare import compare
from diff.rules import RuleBook, RuleSet
from diff.verdict_metrics import observe_batch
from graygate.errors import one_line
from graygate.values import Difference
from graygate.vocabulary import Against, Judgement, Outcome
from store import rejudge as store_rejudge
from store.failures import store_errors
from store.judgement import (
    ClaimedExchange,
    ExchangeJudgement,
    StoredDifference,
    claim_batch,
    store_judgements,
)
from store.runs import get_run_id
from store.trash import SWEEP_EVERY_S, trash_sweeper

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "WorkerStats",
    "judge_batch",
    "judge_exchange",
    "judge_exchanges",
    "judge_executor",
    "judge_pending",
    "rejudge_pending",
    "rejudge_step",
    "run_workers",
    "worker_loop",
]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 200


@dataclass(slots=True)
class WorkerStats:
    """What a worker (or a group of them) has done; for logs and metrics."""

    judged: int = 0
    batches: int = 0
    differences: int = 0
    failures: int = 0  # batches that failed (database away, ...) and were retried


# --------------------------------------------------------------------------- pure part


def _stored(d: Difference, against: str, judgement: str | None = None) -> StoredDifference:
    return StoredDifference(
        against=against,
        path=d.path,
        field=d.field,
        kind=d.kind,
        primary_value=d.primary_value,
        other_value=d.other_value,
        judgement=judgement or d.judgement,
        rule=d.rule,
    )


def judge_exchange(x: ClaimedExchange, rules: RuleSet) -> ExchangeJudgement:
    """The judgement of one claimed exchange under ``rules``. Pure."""

    def verdict(outcome: str) -> ExchangeJudgement:
        return ExchangeJudgement(
            exchange_id=x.id, run_id=x.run_id, endpoint=x.endpoint, outcome=outcome
        )

    if x.mirror_skipped is not None or not x.primary.recorded or not x.canary.recorded:
        return verdict(Outcome.SKIPPED)
    if x.primary.error is not None or x.canary.error is not None:
        return verdict(Outcome.ERROR)
    try:
        primary = x.primary
        against_canary = compare(primary, x.canary, rules)
        against_secondary: list[Difference] | None = None
        if x.secondary.answered:
            against_secondary = compare(primary, x.secondary, rules)
    except Exception:  # a comparison bug must not stop the worker: the exchange is an error
        logger.exception("comparing exchange %s (%s) failed", x.id, x.endpoint)
        return verdict(Outcome.ERROR)

    # Noise is a field AND a kind of difference (Diffy keys its counters by path and
    # difference type): a timestamp whose value differs by nature does not excuse a canary
    # that drops it or changes its type.
    # A truncated body's "not judgeable" difference is no evidence of noise, and is never
    # excused as noise: the exchange is unjudgeable unless something certain differs.
    if against_secondary:
        against_secondary = [d for d in against_secondary if d.judgement != Judgement.UNJUDGEABLE]
    noisy = {(d.field, d.kind) for d in against_secondary} if against_secondary else set()
    stored: list[StoredDifference] = []
    strict = tolerance = noise = unjudgeable = 0
    for d in against_canary:
        if d.judgement == Judgement.UNJUDGEABLE:
            unjudgeable += 1
            stored.append(_stored(d, Against.CANARY))
            continue
        if (d.field, d.kind) in noisy:
            noise += 1
            stored.append(_stored(d, Against.CANARY, Judgement.NOISE))
            continue
        if d.judgement == Judgement.STRICT:
            strict += 1
        elif d.judgement == Judgement.TOLERANCE:
            tolerance += 1
        stored.append(_stored(d, Against.CANARY))
    if against_secondary:
        stored.extend(_stored(d, Against.SECONDARY) for d in against_secondary)
    if not against_canary:
        outcome = Outcome.MATCH
    elif strict == tolerance == 0 and unjudgeable:
        outcome = Outcome.UNJUDGEABLE
    elif strict == tolerance == 0 and noise == len(against_canary):
        outcome = Outcome.NOISE_ONLY
    else:
        outcome = Outcome.DIFFER
    return ExchangeJudgement(
        exchange_id=x.id,
        run_id=x.run_id,
        endpoint=x.endpoint,
        outcome=outcome,
        strict_mismatches=strict,
        tolerance_violations=tolerance,
        noise_differences=None if against_secondary is None else noise,
        differences=tuple(stored),
    )


def judge_exchanges(
    batch: Sequence[ClaimedExchange], rulebook: RuleBook
) -> list[ExchangeJudgement]:
    """Judge a claimed batch. Pure (CPU only): run it in a thread or process."""
    return [judge_exchange(x, rulebook.for_endpoint(x.endpoint)) for x in batch]


# --------------------------------------------------------------------------- I/O part


async def judge_batch(
    engine: AsyncEngine,
    run_id: int,
    rulebook: RuleBook,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    executor: Executor | None = None,
    stats: WorkerStats | None = None,
) -> int:
    """Claim, judge and store one batch of the run's unjudged exchanges in one transaction.

    Returns how many exchanges were judged (0: nothing was left unclaimed). Comparing runs
    in ``executor`` (default: the loop's thread pool) while the claim's locks are held.
    """
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    async with engine.begin() as conn:
        batch = await claim_batch(conn, run_id, batch_size)
        if not batch:
            return 0
        judgements = await loop.run_in_executor(executor, judge_exchanges, batch, rulebook)
        await store_judgements(conn, judgements)
    observe_batch((j.outcome for j in judgements), time.perf_counter() - started)
    if stats is not None:
        stats.judged += len(judgements)
        stats.batches += 1
        stats.differences += sum(len(j.differences) for j in judgements)
    return len(judgements)


async def judge_pending(
    engine: AsyncEngine,
    run: str,
    rulebook: RuleBook,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> int:
    """Judge every exchange of ``run`` that is unjudged and unclaimed now; returns how many.

    UnknownRun when there is no such run; StoreUnavailable when the database is away.
    """
    run_id = await get_run_id(engine, run)
    total = 0
    while True:
        async with store_errors(engine):
            n = await judge_batch(engine, run_id, rulebook, batch_size=batch_size)
        total += n
        if n == 0:
            return total


# Compiled rules of the re-judgements seen lately, by job id.
_REJUDGE_RULES: dict[int, RuleBook] = {}
_REJUDGE_RULES_MAX = 8


def _rejudge_rules(job: store_rejudge.RejudgeJob) -> RuleBook:
    book = _REJUDGE_RULES.get(job.id)
    if book is None:
        book = RuleBook.from_config(CompareConfig.model_validate(dict(job.compare)))
        if len(_REJUDGE_RULES) >= _REJUDGE_RULES_MAX:
            _REJUDGE_RULES.pop(next(iter(_REJUDGE_RULES)))
        _REJUDGE_RULES[job.id] = book
    return book


async def rejudge_step(
    engine: AsyncEngine,
    *,
    run_id: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    executor: Executor | None = None,
) -> int:
    """One step of a queued re-judgement (``graygate rejudge``; of ``run_id``'s when
    given), in one transaction: lock the job (another worker takes another job, or waits
    for the next step), judge its next batch under the job's rules into the staging
    tables and move its cursor; with nothing left, switch the run to the new judgement
    (``store.rejudge.finish``). Returns how many exchanges were judged (0: no job, or the
    job just completed)."""
    loop = asyncio.get_running_loop()
    async with engine.begin() as conn:
        job = await store_rejudge.lock_next_job(conn, run_id)
        if job is None:
            return 0
        batch = await store_rejudge.next_batch(conn, job, batch_size)
        if not batch:
            await store_rejudge.finish(conn, job)
            _REJUDGE_RULES.pop(job.id, None)
            return 0
        book = _rejudge_rules(job)
        judgements = await loop.run_in_executor(executor, judge_exchanges, batch, book)
        await store_rejudge.stage(conn, job, judgements)
    return len(judgements)


async def rejudge_pending(engine: AsyncEngine, run_id: int, *, batch_size: int = 500) -> int:
    """Run the run's queued re-judgement to completion here; returns how many exchanges
    were judged."""
    total = 0
    while True:
        async with store_errors(engine):
            n = await rejudge_step(engine, run_id=run_id, batch_size=batch_size)
            if n == 0:
                async with engine.connect() as conn:
                    if await store_rejudge.lock_next_job(conn, run_id) is None:
                        return total
        total += n


async def worker_loop(
    engine: AsyncEngine,
    run_id: int,
    rulebook: RuleBook,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    idle_min: float = 0.05,
    idle_max: float = 2.0,
    error_max: float = 30.0,
    stop: asyncio.Event | None = None,
    stats: WorkerStats | None = None,
    executor: Executor | None = None,
) -> None:
    """Judge the run's exchanges as they arrive, until cancelled or ``stop`` is set.

    Idle (nothing to claim): waits ``idle_min`` doubling to ``idle_max`` (with jitter).
    Database away or a failing batch: logs, then waits doubling up to ``error_max``; the
    batch's transaction rolled back, so nothing is lost. Cancelling it mid-batch rolls back
    the batch the same way.
    """
    stats = stats if stats is not None else WorkerStats()
    idle = idle_min
    backoff = 0.0
    while stop is None or not stop.is_set():
        try:
            n = await judge_batch(
                engine, run_id, rulebook, batch_size=batch_size, executor=executor, stats=stats
            )
            if n < batch_size:
                # New exchanges first; a queued re-judgement of the run with the time left.
                n += await rejudge_step(
                    engine, run_id=run_id, batch_size=batch_size, executor=executor
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stats.failures += 1
            backoff = min(error_max, max(idle_min, backoff * 2 or 0.5))
            logger.warning(
                "diff worker: batch of run %s failed (%s); retrying in %.1fs",
                run_id,
                one_line(exc, fallback=type(exc).__name__),
                backoff,
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
            await _sleep(backoff, stop)
            continue
        backoff = 0.0
        if n >= batch_size:
            idle = idle_min
            await asyncio.sleep(0)  # let others run between full batches
            continue
        if n > 0:
            idle = idle_min
        await _sleep(idle * random.uniform(0.8, 1.2), stop)
        idle = min(idle_max, idle * 2)


def judge_executor(threads: int, nice: int) -> ThreadPoolExecutor:
    """``threads`` threads for the comparisons, each with its CPU priority lowered by
    ``nice`` (Linux: a thread's nice value is its own; lowering it needs no privilege).
    Where the platform has no per-thread priority, the threads run at the process's."""
    if not 0 <= nice <= 19:
        raise ValueError(f"nice must be within 0..19, not {nice}")
    return ThreadPoolExecutor(
        max_workers=threads,
        thread_name_prefix="diff-judge",
        initializer=_lower_priority,
        initargs=(nice,),
    )


def _lower_priority(nice: int) -> None:
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + nice))
    except (AttributeError, OSError) as exc:  # no per-thread priority here: judged as is
        logger.warning("diff worker: cannot lower the judging thread's priority: %s", exc)


async def _sleep(seconds: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass


@asynccontextmanager
async def run_workers(
    engine: AsyncEngine,
    run_id: int,
    rulebook: RuleBook,
    *,
    count: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    grace: float = 5.0,
    stats: WorkerStats | None = None,
    nice: int = 0,
    sweep_every_s: float | None = SWEEP_EVERY_S,
) -> AsyncIterator[WorkerStats]:
    """Run ``count`` worker loops while the block runs; on exit let them finish their
    batch (up to ``grace`` seconds), then cancel them. Yields their shared stats.

    ``nice`` > 0: the comparisons run in ``count`` threads of their own whose CPU priority
    is lowered by ``nice`` (:func:`judge_executor`), so that a burst of large differing
    documents yields the CPU to the proxy sharing the host (``workers.nice``).

    With them, the trash sweeper (``store.trash.trash_sweeper``, every ``sweep_every_s``;
    None: none): deleted runs' partitions that a crashed or never-started reaper left in
    the trash are dropped by whichever process's workers sweep first.

    In the composition root::

        async def diff_workers(app: web.Application) -> AsyncIterator[None]:
            async with run_workers(app[ENGINE], app[RUN_ID], app[RULEBOOK], count=2):
                yield

        app.cleanup_ctx.append(diff_workers)
    """
    stats = stats if stats is not None else WorkerStats()
    stop = asyncio.Event()
    # Not graygate.tasks.TaskSet: diff must not import proxy (proxy imports diff). The list
    # keeps the references; the block's exit drains them.
    loop = asyncio.get_running_loop()
    executor = judge_executor(count, nice) if nice > 0 else None
    tasks = [
        loop.create_task(
            worker_loop(
                engine,
                run_id,
                rulebook,
                batch_size=batch_size,
                stop=stop,
                stats=stats,
                executor=executor,
            ),
            name=f"diff-worker:{run_id}:{i}",
        )
        for i in range(count)
    ]
    if sweep_every_s is not None:
        tasks.append(
            loop.create_task(
                trash_sweeper(engine, stop, every_s=sweep_every_s), name="trash-sweeper"
            )
        )
    try:
        yield stats
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                logger.error("%s failed", task.get_name(), exc_info=result)
