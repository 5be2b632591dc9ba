"""The intent log, with no database: files left by processes killed with SIGKILL (real
subprocesses), read back by the next one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from proxy.recording.intents import (
    HEADER,
    INTENT_SUFFIX,
    IntentLog,
    KilledProcesses,
    claim_orphans,
)
from proxy.recording.ledger import PROCESS_KILLED, LossKey

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = Path(__file__).with_name("killed_intents.py")


def killed(directory: Path, slots: int, *specs: str) -> None:
    """Run the script; it opens a log, accepts and settles per spec, and SIGKILLs itself."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(directory), str(slots), *specs],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.stdout == b"ready\n", done.stderr.decode()
    assert done.returncode == -9


def intent_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"*{INTENT_SUFFIX}"))


def test_a_killed_process_leaves_its_outstanding_counts(tmp_path: Path) -> None:
    killed(tmp_path, 8, "11:50:30", "12:7:7", "13:5:0")
    [path] = intent_files(tmp_path)
    assert path.stat().st_size == HEADER + 8 * 16
    [orphan] = claim_orphans(tmp_path)
    assert orphan.counts == {11: 20, 13: 5} and orphan.overflow == 0
    assert orphan.name.startswith("killed:")
    orphan.remove()
    assert intent_files(tmp_path) == []


def test_runs_past_the_slots_are_counted_without_a_run(tmp_path: Path) -> None:
    # Two slots: runs 1 and 2 take them; 3 and 4 overflow. Run 1 settles and frees its slot,
    # which run 5 then takes. The file never grows.
    killed(tmp_path, 2, "1:4:0", "2:3:0", "3:2:0", "4:6:1", "1:0:4", "5:9:2")
    [path] = intent_files(tmp_path)
    assert path.stat().st_size == HEADER + 2 * 16
    [orphan] = claim_orphans(tmp_path)
    assert orphan.counts == {2: 3, 5: 7}
    assert orphan.overflow == 2 + 5
    orphan.release()


def test_a_live_log_is_not_claimed_and_a_clean_close_deletes_it(tmp_path: Path) -> None:
    log = IntentLog(tmp_path, slots=4)
    log.open()
    log.accept(1)
    log.accept(1)
    assert claim_orphans(tmp_path) == []  # locked by its (living) owner
    assert log.outstanding == {1: 2}
    log.settle({1: 2, 99: 3})  # a run it never accepted: ignored
    assert log.outstanding == {}
    log.close()
    assert intent_files(tmp_path) == []


def test_a_close_with_outstanding_exchanges_leaves_them_for_the_next(tmp_path: Path) -> None:
    log = IntentLog(tmp_path, slots=4)
    log.open()
    for _ in range(3):
        log.accept(7)
    log.settle({7: 1})
    log.close()  # e.g. their loss counters could be neither stored nor spilled
    [orphan] = claim_orphans(tmp_path)
    assert orphan.counts == {7: 2}
    orphan.release()


def test_an_unreadable_log_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / f"1-1-x{INTENT_SUFFIX}").write_bytes(b"GGINTNT1 but not really")
    assert claim_orphans(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == [f"1-1-x{INTENT_SUFFIX}.corrupt"]


@pytest.mark.parametrize("slots", [0, 65_537])
def test_slots_are_bounded(tmp_path: Path, slots: int) -> None:
    with pytest.raises(ValueError, match="slots must be between 1 and 65536"):
        IntentLog(tmp_path, slots=slots)


def test_the_bound_itself_is_accepted(tmp_path: Path) -> None:
    log = IntentLog(tmp_path, slots=65_536)
    log.open()
    assert log.size == HEADER + 65_536 * 16
    log.close()


async def test_killed_processes_are_charged_once_while_the_database_is_up(
    tmp_path: Path,
) -> None:
    await asyncio.to_thread(killed, tmp_path, 4, "3:10:4")
    await asyncio.to_thread(killed, tmp_path, 4, "3:2:0", "4:1:0")
    added: dict[str, Mapping[LossKey, int]] = {}
    away = [True]

    async def add_once(name: str, losses: Mapping[LossKey, int]) -> bool:
        if away[0]:
            raise ConnectionRefusedError("connection refused")
        if name in added:
            return False
        added[name] = dict(losses)
        return True

    killed_processes = KilledProcesses(tmp_path)
    assert killed_processes.scan_due(0.0)
    await killed_processes.scan()
    assert killed_processes.pending
    assert isinstance(await killed_processes.charge(add_once), ConnectionRefusedError)
    assert killed_processes.pending and len(intent_files(tmp_path)) == 2  # kept for later
    away[0] = False
    assert await killed_processes.charge(add_once) is None
    assert not killed_processes.pending and intent_files(tmp_path) == []
    assert sorted(added.values(), key=len) == [
        {(3, PROCESS_KILLED): 6},
        {(3, PROCESS_KILLED): 2, (4, PROCESS_KILLED): 1},
    ]
    assert killed_processes.charged == 9
