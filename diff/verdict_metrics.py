"""Prometheus metrics of the judgement: the verdict as gauges, and the diff workers' work.

- ``graygate_verdict{run}``: the run's latest computed verdict: 0 GO, 1 NO_GO,
  2 INCONCLUSIVE (so a Prometheus-based gate, Argo's ``prometheus`` provider or a Flagger
  MetricTemplate, needs no web endpoint);
- ``graygate_check_passed{run, check}``: 1 passed, 0 failed, -1 not decided;
- ``graygate_unjudged_exchanges{run}``: recorded exchanges not judged yet, as of that verdict;
- ``graygate_diff_exchanges_judged_total{outcome}``: exchanges the diff workers judged;
- ``graygate_diff_batch_seconds``: time to claim, judge and store one batch.

Set by ``diff.evaluate.assess_run`` (whoever computes a verdict: the admin app, ``graygate
verdict``, the report) and ``diff.worker.judge_batch``. The ``_created`` series are off
(``disable_created_metrics``): they double the series for no use in a gate.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterable
from typing import Final

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from graygate.values import Verdict, VerdictResult

__all__ = [
    "BATCH_SECONDS",
    "CHECK_PASSED",
    "JUDGED",
    "UNJUDGED",
    "VERDICT",
    "VERDICT_CODE",
    "observe_batch",
    "observe_verdict",
]

logger = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]

VERDICT_CODE: Final = {Verdict.GO: 0, Verdict.NO_GO: 1, Verdict.INCONCLUSIVE: 2}

VERDICT: Final = Gauge(
    "graygate_verdict",
    "The run's latest computed verdict: 0 GO, 1 NO_GO, 2 INCONCLUSIVE.",
    ("run",),
    multiprocess_mode="mostrecent",
)
CHECK_PASSED: Final = Gauge(
    "graygate_check_passed",
    "Whether a verdict check passed in the run's latest verdict: 1 yes, 0 no, -1 undecided.",
    ("run", "check"),
    multiprocess_mode="mostrecent",
)
UNJUDGED: Final = Gauge(
    "graygate_unjudged_exchanges",
    "Recorded exchanges of the run not judged yet, as of its latest computed verdict.",
    ("run",),
    multiprocess_mode="mostrecent",
)
JUDGED: Final = Counter(
    "graygate_diff_exchanges_judged",
    "Exchanges the diff workers judged, by outcome.",
    ("outcome",),
)
BATCH_SECONDS: Final = Histogram(
    "graygate_diff_batch_seconds",
    "Time for a diff worker to claim, judge and store one batch of exchanges.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def observe_verdict(result: VerdictResult, *, unjudged: int | None = None) -> None:
    """Set the run's verdict and check gauges from ``result``."""
    VERDICT.labels(result.run).set(VERDICT_CODE[result.verdict])
    for check in result.checks:
        value = {True: 1, False: 0, None: -1}[check.passed]
        CHECK_PASSED.labels(result.run, check.name).set(value)
    if unjudged is not None:
        UNJUDGED.labels(result.run).set(unjudged)


def observe_batch(outcomes: Iterable[str], seconds: float) -> None:
    """Count one judged batch: its exchanges by outcome, and how long it took."""
    for outcome, n in Tally(outcomes).items():
        JUDGED.labels(outcome).inc(n)
    BATCH_SECONDS.observe(seconds)
