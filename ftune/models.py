"""Loading tokenizers and models — from the Hub, a folder, or a finished run (full or LoRA)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftune.errors import UsageError
from ftune.hub import require_model


def load_tokenizer(name: str, **kwargs):
    """The model's tokenizer (fast when one exists), with a pad token so batches can be padded."""
    from transformers import AutoTokenizer

    require_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer from {name}: {_first_line(exc)}") from None
    if tokenizer.pad_token is None:
        # Decoder-only tokenizers (GPT-2, Llama) have none; padding is masked out, so EOS serves.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(auto_class: str, name: str, **kwargs):
    """`AutoModelFor...from_pretrained(name)`, with a one-line error when it cannot be loaded."""
    import transformers

    require_model(name)
    cls = getattr(transformers, auto_class)
    try:
        return cls.from_pretrained(name, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc) or "Unrecognized model" in str(exc):
            raise UsageError(f"{name} cannot be loaded as {auto_class.removeprefix('AutoModelFor')}: "
                             f"{_first_line(exc)}") from None
        raise
    except OSError as exc:
        raise UsageError(f"cannot load model {name}: {_first_line(exc)}") from None


def load_run_model(run, task, **base_kwargs: Any):
    """The trained model of a finished run: full weights, or the base model plus the run's LoRA adapter."""
    if not run.is_lora:
        return load_model(task.model_class, str(run.path), **base_kwargs)
    from peft import PeftModel

    base = task.load_base_model(run.config, run.info.get("state", {}), **base_kwargs)
    return PeftModel.from_pretrained(base, str(run.path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def model_display_name(name: str) -> str:
    path = Path(name)
    return path.name if path.exists() else name.split("/")[-1]
