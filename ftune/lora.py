"""Wrapping a model in LoRA adapters (peft), with target modules chosen per architecture."""

from __future__ import annotations

from ftune.errors import UsageError


def default_targets(model) -> list[str] | str:
    """peft's per-architecture attention projections; every linear layer (not the head) for unknown ones."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAPPING

    model_type = getattr(model.config, "model_type", None)
    targets = MAPPING.get(model_type)
    return list(targets) if targets else "all-linear"


def wrap_with_lora(model, config, task_type: str):
    """A peft model whose LoRA weights (and, through the task type, the task head) are trainable."""
    from peft import LoraConfig, get_peft_model

    targets = config.lora_targets or default_targets(model)
    if isinstance(targets, list):
        names = {name.split(".")[-1] for name, _ in model.named_modules()}
        missing = [t for t in targets if t not in names and not any(n.endswith(t) for n in names)]
        if missing:
            linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if type(m).__name__ in
                             ("Linear", "Conv1D")})
            raise UsageError(f"--lora-targets {', '.join(missing)} not found in {type(model).__name__}; its linear "
                             f"layers are: {', '.join(linear)}")
    if config.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need an input that carries gradients
    lora_config = LoraConfig(
        task_type=task_type,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        # GPT-2 stores its fused attention weights transposed (Conv1D): peft must know to match them.
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )
    return get_peft_model(model, lora_config)


def trainable_summary(model) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return f"{trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.2f}%)"
