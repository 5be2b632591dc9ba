"""Run as a script by the tests: an intent log whose process is killed (SIGKILL).

python killed_intents.py DIRECTORY SLOTS RUN:ACCEPTED:SETTLED ...
"""

from __future__ import annotations

import os
import signal
import sys

from proxy.recording.intents import IntentLog


def main(directory: str, slots: int, specs: list[str]) -> None:
    log = IntentLog(directory, slots=slots)
    log.open()
    for spec in specs:
        run_id, accepted, settled = (int(x) for x in spec.split(":"))
        for _ in range(accepted):
            log.accept(run_id)
        log.settle({run_id: settled})
    print("ready", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
