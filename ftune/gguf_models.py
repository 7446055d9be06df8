"""Local GGUF models: located as a `.gguf` file or a folder plus `--gguf-file`, loaded dequantised.

transformers reads a GGUF checkpoint through its GGUF quantizer and dequantises every tensor to float, so
the model trains like any other; the quantizer object and config entry it leaves behind would make
transformers treat the model as quantized (no full fine-tuning, a `quantization_config` in the saved
config.json), so they are dropped right after loading and the run saves ordinary safetensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ftune.errors import UsageError


def gguf_source(model: str, gguf_file: Optional[str] = None) -> tuple[str, Optional[str]]:
    """(folder, absolute .gguf path) for a GGUF model, or (model, None) for anything else."""
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if gguf_file and Path(gguf_file).name != path.name:
            raise UsageError(f"--model {model} is already a .gguf file; drop --gguf-file {gguf_file}")
        if not path.is_file():
            raise UsageError(f"GGUF file {model} does not exist; check the path given to --model")
        return str(path.resolve().parent), str(path.resolve())
    if not gguf_file:
        return model, None
    file = Path(gguf_file).expanduser()
    file = file if file.is_absolute() else path / file
    if not file.is_file():
        raise UsageError(f"GGUF file {file} does not exist; --gguf-file names a .gguf file inside the --model folder")
    return str(file.resolve().parent), str(file.resolve())


def load_gguf_config(folder: str, file: str):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, gguf_file=file)
    except Exception as exc:  # noqa: BLE001 — gguf raises many types for a file it cannot read
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UsageError(f"cannot read GGUF file {file}: {text}; pass a GGUF model transformers supports") from None


def require_causal_lm(config, where: str) -> None:
    """Raise UsageError unless `config` describes a decoder-only model AutoModelForCausalLM can build."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if getattr(config, "is_encoder_decoder", False) or type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UsageError(f"{where} holds a {getattr(config, 'model_type', 'unknown')} model, which is not a causal "
                         "language model; ftune lm needs a decoder-only model (GPT-2, Llama, ...)")


def load_gguf_causal_lm(folder: str, file: str):
    """AutoModelForCausalLM from a GGUF file, dequantised to float32 and free of quantizer state."""
    from transformers import AutoModelForCausalLM

    require_causal_lm(load_gguf_config(folder, file), f"GGUF file {file}")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype="float32")
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)  # quantizer, config entry, is_quantized flag
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._is_quantized = False
    # Recorded by peft as the adapter's base model: the file itself, so people see what to load.
    model.name_or_path = file
    return model


def load_gguf_tokenizer(folder: str, file: str):
    from ftune.models import load_tokenizer

    require_causal_lm(load_gguf_config(folder, file), f"GGUF file {file}")  # a clear error before the tokenizer's
    return load_tokenizer(folder, gguf_file=file)
