"""Eager attention while an encoder trains on a CPU.

In eager attention the attention dropout is `torch.nn.functional.dropout`, so it is ftune's (`ftune.cpu.dropout`),
not a mask drawn inside PyTorch's fused attention; on CPUs that makes a training step faster (docs/speed.md).
Models that generate text (causal LMs, seq2seq) keep their own implementation. `restore_attention` puts the model's
own implementation back before it is scored and saved, so the figures are those `ftune eval` computes.
"""

from __future__ import annotations

TRAINING_ATTENTION = "_ftune_attention_after_training"


def use_eager_attention(model) -> bool:
    """Switch `model` (or the model inside a peft model) to eager attention; False, changing nothing, where the
    model generates text or is eager already."""
    base = _base(model)
    if base.can_generate():
        return False
    own = base.config._attn_implementation
    if own == "eager" or TRAINING_ATTENTION in base.__dict__:
        return False
    setattr(base, TRAINING_ATTENTION, own)
    base.set_attn_implementation("eager")
    return True


def restore_attention(model) -> None:
    """Undo `use_eager_attention`."""
    base = _base(model)
    own = base.__dict__.pop(TRAINING_ATTENTION, None)
    if own is not None:
        base.set_attn_implementation(own)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model
