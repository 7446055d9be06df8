"""Dropout for training on CPUs: the same distribution as PyTorch's, at a fraction of the cost.

On a CPU, PyTorch draws a dropout mask one random number at a time on one thread, a large share of a training
step (docs/speed.md): attention dropout alone masks batch x heads x tokens x tokens values per layer.

`cpu_dropout()` is a scope in which `torch.nn.functional.dropout` (what `nn.Dropout` and the attention functions
call) on a CPU tensor draws its mask from NumPy's SFC64 generator in blocks spread over PyTorch's threads. The
result is dropout as defined: each value is kept with probability 1 - p (to within 2^-17: 16 random bits decide
each value) and scaled by 1 / (1 - p); the drawing threads write the scaled mask directly in the values' type (as
PyTorch holds its own), so applying it is one multiplication. The gradient flows through the kept values only.
Every mask is seeded from PyTorch's own generator, so a seeded run repeats exactly, a resumed run draws the masks
an uninterrupted one would (the Trainer saves and restores that generator), and the masks do not depend on the
number of threads. They differ from the masks PyTorch would draw, as two seeds' masks do.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

BLOCK = 1 << 18  # mask values per random stream: a block's mask is the same whichever thread draws it


def cpu_dropout():
    """A context in which `torch.nn.functional.dropout` of CPU tensors in training is `dropout` below."""
    return _mode_class()()


def dropout(x, p: float):
    """Dropout of `x` with probability `p` (0 < p < 1), training mode, differentiable."""
    return _dropout_function().apply(x, p)


def scaled_mask(shape, p: float, dtype):
    """A tensor of `shape` and floating `dtype` whose values are 1 / (1 - p) (rounded to `dtype`, as PyTorch's
    dropout rounds it) with probability 1 - p and 0 otherwise, seeded from PyTorch's generator."""
    import numpy as np
    import torch

    numel = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (1,), dtype=torch.int64))
    threshold = np.uint16(min(max(round(p * 2**16), 1), 2**16 - 1))  # 16 random bits decide a value
    scale = torch.tensor(1.0 / (1.0 - p), dtype=dtype)
    bits_of, same_size = {2: (np.uint16, torch.int16), 4: (np.uint32, torch.int32),
                          8: (np.uint64, torch.int64)}[scale.element_size()]
    scale_bits = bits_of(scale.view(same_size).item())  # the scale's bit pattern: a kept value's, written as is
    mask = np.empty(numel, dtype=bits_of)

    def fill(block: int) -> None:
        part = mask[block * BLOCK:(block + 1) * BLOCK]
        bits = np.random.SFC64(np.random.SeedSequence((seed, block))).random_raw((len(part) + 3) // 4)
        np.multiply(bits.view(np.uint16)[:len(part)] >= threshold, scale_bits, out=part)

    blocks = -(-numel // BLOCK)
    if blocks > 1 and torch.get_num_threads() > 1:
        pool = _pool(torch.get_num_threads(), os.getpid())  # a forked process needs threads of its own
        list(pool.map(fill, range(blocks)))  # NumPy draws without holding the GIL
    else:
        for block in range(blocks):
            fill(block)
    return torch.from_numpy(mask).view(dtype).view(shape)


@lru_cache(maxsize=None)
def _pool(threads: int, pid: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="ftune-dropout")


@lru_cache(maxsize=None)
def _dropout_function():
    import torch

    class Dropout(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, p):
            scaled = scaled_mask(x.shape, p, x.dtype)  # 0 or 1 / (1 - p)
            ctx.save_for_backward(scaled)
            return x * scaled

        @staticmethod
        def backward(ctx, grad):
            (scaled,) = ctx.saved_tensors
            return grad * scaled, None

    return Dropout


@lru_cache(maxsize=None)
def _mode_class():
    import torch
    from torch.overrides import TorchFunctionMode

    functional_dropout = torch.nn.functional.dropout

    class DropoutMode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is functional_dropout:
                named = dict(zip(("input", "p", "training", "inplace"), args), **kwargs)
                x, p = named["input"], named.get("p", 0.5)
                if (named.get("training", True) and not named.get("inplace", False) and 0 < p < 1
                        and x.device.type == "cpu" and x.is_floating_point()):
                    return dropout(x, p)
            return func(*args, **kwargs)

    return DropoutMode
