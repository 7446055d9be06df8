"""The process of one sweep trial: `python -m ftune.cli.sweep_trial`, started by `ftune sweep` (not by people).

It dies with the sweep that started it (Linux: the kernel sends it SIGKILL when its parent dies), reports its
failures as one `error:` line in its log, like any command, and exits with ftune's codes. A signal the sweep passes
on stops it as it stops a training command: a checkpoint, then exit code 130, 143 or 138.
"""

from __future__ import annotations

import os
import sys

from ftune.cli.common import report, set_debug
from ftune.errors import RunInterrupted
from ftune.signals import stop_on_signals
from ftune.sweep.trial_runs import SWEEP_PID


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when the sweep that started it dies (Linux; elsewhere a no-op)."""
    import ctypes
    import ctypes.util
    import signal

    sweep = os.environ.get(SWEEP_PID)
    if not sys.platform.startswith("linux") or not sweep:
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != int(sweep):  # the sweep died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    die_with_parent()
    debug = os.environ.get("FTUNE_DEBUG") == "1"
    set_debug(debug)
    try:
        with stop_on_signals():  # the sweep passes its signal on: the trial saves a checkpoint and exits 130/143/138
            from ftune.sweep.trial_process import read_spec, run_trial

            run_trial(read_spec(), sys.stdin)
    except BaseException as exc:  # noqa: BLE001 — the boundary where failures become one line
        if debug and not isinstance(exc, RunInterrupted):
            raise
        sys.exit(report(exc))


if __name__ == "__main__":
    main()
