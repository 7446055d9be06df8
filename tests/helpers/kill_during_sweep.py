"""Run `python -m ftune sweep ARGS` and SIGKILL the sweep's process while trial NUMBER trains.

    python tests/helpers/kill_during_sweep.py 1 sweep classify --data ... --output-dir SWEEP ...

The sweep is killed when trial NUMBER reports an evaluation after it has written a complete checkpoint. A trial waits
for the sweep's answer to each evaluation, so it is caught mid-run, with a half-made run folder, whatever the speed
of the machine. The kill is the real thing (os.kill(getpid(), SIGKILL)): nothing in the sweep gets to clean up, and
its trial process is left to the kernel's parent-death signal (or, if it wakes first, to the end of its answers).
Before the kill, the trial's process id goes to stderr as `trial process PID`.
"""

import os
import runpy
import signal
import sys
from pathlib import Path


def main() -> None:
    number = int(sys.argv[1])
    sys.argv = ["ftune", *sys.argv[2:]]
    import ftune.sweep.search as search
    from ftune.folders import last_complete_checkpoint

    original = search.run_trial_process

    def run_trial_process(spec, **kwargs):
        folder = Path(spec["config"]["output_dir"])
        if folder.name == f"trial-{number:03d}":
            answer, processes = kwargs["report"], kwargs["processes"]

            def report(evaluation, value, last):
                if last_complete_checkpoint(folder) is not None:
                    for process in processes:  # the caller waits for the trial to end before it resumes
                        sys.stderr.write(f"trial process {process.pid}\n")
                    sys.stderr.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return answer(evaluation, value, last)

            kwargs["report"] = report
        return original(spec, **kwargs)

    search.run_trial_process = run_trial_process
    runpy.run_module("ftune", run_name="__main__")


if __name__ == "__main__":
    main()
