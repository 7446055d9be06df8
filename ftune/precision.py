"""Choosing the numeric precision of a run."""

from __future__ import annotations

from ftune.errors import UsageError


def resolve_precision(requested: str) -> str:
    """`auto` becomes bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU; explicit choices are checked."""
    import torch

    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if requested == "auto":
        return "bf16" if bf16_ok else ("fp16" if cuda else "fp32")
    if requested == "fp16" and not cuda:
        raise UsageError("--precision fp16 needs a CUDA GPU (loss scaling runs there); use --precision fp32 or bf16 "
                         "on CPU")
    if requested == "bf16" and cuda and not bf16_ok:
        raise UsageError("this GPU does not support bf16; use --precision fp16 or auto")
    return requested


def precision_arguments(precision: str) -> dict:
    """TrainingArguments for a resolved precision (mixed precision: weights stay fp32, matmuls run lower)."""
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}
