"""The process of one sweep trial: `python -m ftune.cli.sweep_trial`, started by `ftune sweep` (not by people).

It dies with the sweep that started it (Linux: the kernel sends it SIGKILL when its parent dies), reports its
failures as one `error:` line in its log, like any command, and exits with ftune's codes.
"""

from __future__ import annotations

import os
import sys

from ftune.cli.common import report, set_debug
from ftune.sweep.trials import SWEEP_PID


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
    set_debug(os.environ.get("FTUNE_DEBUG") == "1")
    try:
        from ftune.sweep.trial import read_spec, run_trial

        run_trial(read_spec(), sys.stdin)
    except BaseException as exc:  # noqa: BLE001 — the boundary where failures become one line
        if os.environ.get("FTUNE_DEBUG") == "1":
            raise
        sys.exit(report(exc))


if __name__ == "__main__":
    main()
