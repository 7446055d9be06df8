"""Starting several training processes on this machine (`--num-processes N`)."""

from __future__ import annotations

import os


def maybe_relaunch(config) -> bool:
    """Start `config.num_processes` ranks of this same command and wait for them; False if nothing to do.

    Inside a distributed launch (torchrun, accelerate launch) the ranks already exist, so this returns False.
    """
    if config.num_processes <= 1 or "LOCAL_RANK" in os.environ:
        return False
    raise NotImplementedError
