"""How a whole ftune process asks the C allocator to keep the memory it frees.

A training step on a CPU frees and allocates the same large tensors again and again (activations, the dense
gradient of the word embeddings: 47 MB on MiniLM). By default glibc serves a large block (above a threshold that
adapts between 128 KiB and 32 MiB) with a fresh `mmap` and gives the heap's free top back to the system, so every
step pays the kernel to fault in and zero the same pages again (docs/speed.md has the measurements).
"""

from __future__ import annotations

import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30),  # blocks below 1 GiB come from the heap, reused when freed
             (_M_TRIM_THRESHOLD, 1 << 30),  # keep up to 1 GiB of freed memory at the heap's top
             (_M_TOP_PAD, 256 << 20))  # grow the heap 256 MiB at a time (address space: pages count once used)


def keep_freed_memory() -> bool:
    """Apply the settings above where the C library is glibc (True); elsewhere change nothing (False)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
    except (AttributeError, ValueError, OSError):  # not Linux, or not glibc
        return False
    import ctypes

    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in _SETTINGS)
