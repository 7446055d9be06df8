"""Run `python -m ftune sweep ARGS` and SIGKILL the sweep's process while trial NUMBER trains.

    python tests/helpers/kill_during_sweep.py 1 sweep classify --data ... --output-dir SWEEP ...

The sweep is killed once trial NUMBER has written a complete checkpoint, so the trial is caught mid-run with a
half-made run folder. The kill is the real thing (os.kill(getpid(), SIGKILL)): nothing in the sweep gets to clean up,
and its trial process is left to the kernel's parent-death signal.
"""

import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path


def kill_when_checkpointed(folder: Path) -> None:
    while not any(folder.glob("checkpoint-*/.ftune-complete")):
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    number = int(sys.argv[1])
    sys.argv = ["ftune", *sys.argv[2:]]
    import ftune.sweep.workers as workers

    original = workers.run_trial_process

    def run_trial_process(spec, **kwargs):
        folder = Path(spec["config"]["output_dir"])
        if folder.name == f"trial-{number:03d}":
            threading.Thread(target=kill_when_checkpointed, args=(folder,), daemon=True).start()
        return original(spec, **kwargs)

    workers.run_trial_process = run_trial_process
    runpy.run_module("ftune", run_name="__main__")


if __name__ == "__main__":
    main()
