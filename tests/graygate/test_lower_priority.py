"""``graygate.processes.lower_priority``: a process that judges and serves no user yields
the CPU, every thread of it, those started before the call and after it. Run in a child
process: a priority once lowered cannot be raised back without privilege."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")

SCRIPT = """
import json, os, sys, threading
from graygate.processes import lower_priority

def nice(tid):
    with open(f"/proc/self/task/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])

hold = threading.Event()
before = threading.Thread(target=hold.wait)
before.start()
lowered = lower_priority(int(sys.argv[1]))
seen = []
after = threading.Thread(target=lambda: seen.append(nice(threading.get_native_id())))
after.start()
after.join()
out = {"lowered": lowered, "main": nice(threading.get_native_id()),
       "before": nice(before.native_id), "after": seen[0]}
hold.set()
before.join()
print(json.dumps(out))
"""


def _run(nice: int) -> dict[str, int]:
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(nice)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": root},
    )
    result: dict[str, int] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("nice", [1, 10, 19])
def test_every_thread_is_lowered_those_before_and_after(nice: int) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    got = _run(nice)
    want = min(19, base + nice)  # 19 is the bound: never past it
    assert got == {"lowered": 2, "main": want, "before": want, "after": want}


def test_zero_keeps_the_priority() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert _run(0) == {"lowered": 0, "main": base, "before": base, "after": base}
