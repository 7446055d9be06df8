"""Run `python -m ftune sweep ARGS` and send the sweep's own process SIGNAL while trial NUMBER trains.

    python tests/helpers/signal_during_sweep.py SIGTERM 1 sweep classify --data ... --output-dir SWEEP ...

The signal goes to the sweep when trial NUMBER reports its first evaluation. A trial waits for the sweep's answer to
each evaluation, and the answer is held back until the sweep has passed the signal on to its trials, so the trial
gets it at that evaluation (and saves its checkpoint there) whatever the speed of the machine. The signal is the real
thing (os.kill(getpid(), SIGNAL)), handled by the real CLI entry point.
"""

import os
import runpy
import signal
import sys
import threading
from pathlib import Path


def main() -> None:
    signum, number = getattr(signal, sys.argv[1]), int(sys.argv[2])
    sys.argv = ["ftune", *sys.argv[3:]]
    import ftune.sweep.search as search
    import ftune.sweep.trial_runs as trial_runs

    passed_on = threading.Event()
    original_stop = trial_runs.TrialProcesses.stop

    def stop(self, signum):
        original_stop(self, signum)
        passed_on.set()

    trial_runs.TrialProcesses.stop = stop
    original = search.run_trial_process

    def run_trial_process(spec, **kwargs):
        if Path(spec["config"]["output_dir"]).name == f"trial-{number:03d}" and not passed_on.is_set():
            answer = kwargs["report"]

            def report(evaluation, value, last):
                if not passed_on.is_set():
                    os.kill(os.getpid(), signum)
                    if not passed_on.wait(120):
                        raise SystemExit("the sweep never passed the signal on to its trials")
                return answer(evaluation, value, last)

            kwargs["report"] = report
        return original(spec, **kwargs)

    search.run_trial_process = run_trial_process
    runpy.run_module("ftune", run_name="__main__")


if __name__ == "__main__":
    main()
