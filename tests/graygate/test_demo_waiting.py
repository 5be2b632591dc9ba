"""What the demo waits for before it prints the verdict: the documents are the verdict's
own checks (``Check.as_dict``), the runtime one computed from samples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from config.schema import RuntimeConfig
from diff.runtime_checks import RuntimeSample, runtime_check
from graygate.demo import _waiting_for
from graygate.values import Check

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
MS = 1_000_000


def _runtime(slow_windows: set[int]) -> dict[str, Any]:
    cfg = RuntimeConfig.model_validate(
        {"canary": {"expvar": "http://127.0.0.1:1/debug/vars"}, "window_s": 10.0,
         "gc_pause_budget_ms": 10}
    )  # fmt: skip
    samples, num_gc = [], 0
    for t in range(60):
        pauses = (50 * MS,) * 5 if t // 10 in slow_windows else (MS,) * 5
        num_gc += len(pauses)
        samples.append(
            RuntimeSample(
                taken_at=T0 + timedelta(seconds=t), source="expvar", goroutines=10,
                heap_alloc=1, heap_inuse=1, num_gc=num_gc, gc_cpu_fraction=0.01,
                pauses_ns=pauses,
            )
        )  # fmt: skip
    return runtime_check(samples, cfg, baseline=None).as_dict()


def _doc(*checks: dict[str, Any]) -> dict[str, Any]:
    return {"verdict": "INCONCLUSIVE", "checks": list(checks)}


def test_nothing_to_wait_for() -> None:
    assert _waiting_for(_doc(_runtime(set()), Check("backlog", True, 0, 0).as_dict())) is None
    # A runtime check that failed is decided: nothing to wait for either.
    assert _waiting_for(_doc(_runtime({1, 2, 3}))) is None


def test_the_runtime_checks_next_window() -> None:
    pending = _runtime({4, 5})  # the two latest windows over: a third would fail it
    assert pending["passed"] is None and pending["observed"]["gc_pending"] is True
    assert _waiting_for(_doc(pending)) == "the runtime check's next window"


def test_the_backlog_and_the_write_checks_come_first() -> None:
    backlog = Check("backlog", False, 3, 0, blocking=False).as_dict()
    writes = Check("writes", None, 0, 0).as_dict()
    assert _waiting_for(_doc(_runtime({4, 5}), backlog, writes)) == "the judging backlog"
    assert _waiting_for(_doc(_runtime({4, 5}), writes)) == "the write checks"
