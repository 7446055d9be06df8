"""Rank helpers for runs started by torchrun / accelerate launch (or `--num-processes`).

They read the launcher's environment, so they cost nothing in a single process.
"""

from __future__ import annotations

import os
from typing import Any


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def _ensure_process_group() -> None:
    """Join the launcher's process group (Trainer would do it later; ftune needs it for its own barriers)."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState()


def wait_for_everyone() -> None:
    if world_size() > 1:
        _ensure_process_group()
        import torch.distributed as td

        td.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's value on every rank (e.g. a default output folder named after the time)."""
    if world_size() <= 1:
        return value
    _ensure_process_group()
    import torch.distributed as td

    holder = [value]
    td.broadcast_object_list(holder, src=0)
    return holder[0]
