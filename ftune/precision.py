"""Choosing the numeric precision of a run."""

from __future__ import annotations

from ftune.errors import UsageError


def resolve_precision(requested: str) -> str:
    """`auto` becomes bf16 on GPUs that support it, fp16 on older GPUs, bf16 on CPUs with bf16 matrix units (AMX),
    fp32 on other CPUs; explicit choices are checked. bf16 is mixed precision: the weights stay fp32."""
    import torch

    cuda = torch.cuda.is_available()
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if requested == "auto":
        if cuda:
            return "bf16" if bf16_ok else "fp16"
        return "bf16" if cpu_has_bf16_matrix_units() else "fp32"
    if requested == "fp16" and not cuda:
        raise UsageError("--precision fp16 needs a CUDA GPU (loss scaling runs there); use --precision fp32 or bf16 "
                         "on CPU")
    if requested == "bf16" and cuda and not bf16_ok:
        raise UsageError("this GPU does not support bf16; use --precision fp16 or auto")
    return requested


def cpu_has_bf16_matrix_units() -> bool:
    """Intel AMX tiles: bf16 matrix products there run much faster than fp32 (measured: docs/speed.md)."""
    import torch

    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check and check())


def scoring_precision(precision: str) -> str:
    """The precision held-out rows and predictions are scored in: fp32 on CPU, so that a row's prediction does
    not move with the shapes of the batch it is in (bf16 rounding does); the run's own precision on GPUs."""
    import torch

    return precision if torch.cuda.is_available() else "fp32"


def precision_arguments(precision: str) -> dict:
    """TrainingArguments for a resolved precision (mixed precision: weights stay fp32, matmuls run lower)."""
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def check_4bit_support() -> None:
    """QLoRA needs a CUDA GPU and bitsandbytes; say so plainly instead of failing deep inside a load."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise UsageError("--load-in-4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); drop it to train LoRA in "
                         "full precision on this machine")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError("--load-in-4bit needs bitsandbytes: pip install 'ftune[qlora]'")


def quantization_kwargs(config) -> dict:
    """from_pretrained arguments for QLoRA: NF4 weights, double quantisation, bf16 compute."""
    if not getattr(config, "load_in_4bit", False):
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_use_double_quant=True,
                                                      bnb_4bit_compute_dtype=torch.bfloat16)}
