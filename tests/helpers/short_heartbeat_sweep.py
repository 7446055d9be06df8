"""Run `python -m ftune sweep ARGS` with Optuna's heartbeat every INTERVAL seconds and a grace period of GRACE seconds
(ftune's own are 10 and 120), so a test sees a dead process's trial marked failed in seconds.

    python tests/helpers/short_heartbeat_sweep.py 1 10 HOLD sweep classify --storage URL ...

With HOLD a path (not `-`), the sweep holds its first trial at that trial's first evaluation: it reports the figure to
the study, writes the trial's number to HOLD and never answers the trial, so the trial stays mid-run, whatever the
speed of the machine, until the test kills the sweep (its heartbeat goes on meanwhile: the sweep is alive).
"""

import os
import runpy
import sys
import threading
from pathlib import Path


def main() -> None:
    interval, grace, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    sys.argv = ["ftune", *sys.argv[4:]]
    import ftune.sweep.search as search
    import ftune.sweep.study as study

    study.HEARTBEAT_S, study.GRACE_S = interval, grace
    if hold != "-":
        original = search.run_trial_process

        def run_trial_process(spec, **kwargs):
            number = int(Path(spec["config"]["output_dir"]).name.split("-")[1])
            answer = kwargs["report"]

            def report(evaluation, value, last):
                answer(evaluation, value, last)  # reported to the study; the answer is never sent
                Path(hold + ".tmp").write_text(str(number))
                os.replace(hold + ".tmp", hold)  # whole, for the test that waits for it
                threading.Event().wait()  # never answers

            kwargs["report"] = report
            return original(spec, **kwargs)

        search.run_trial_process = run_trial_process
    runpy.run_module("ftune", run_name="__main__")


if __name__ == "__main__":
    main()
