"""Packing for causal-LM fine-tuning on prompt/completion and chat data: each training batch is one row of its
examples laid end to end — no pad tokens at all — with position ids that restart at every example.

transformers builds a block-diagonal causal mask from such position ids (when no attention mask and no cache is
given: packed batches say use_cache=False, else the model would open a cache and read one long sequence), so
no token attends across an example boundary, and the first token of each example gets label -100: the loss is
exactly the loss of the same examples in a padded batch, on the same number of tokens, without computing the
padding. Whether a model honours the restarted positions is checked on the model itself, not assumed
(`keeps_examples_apart`); where it does not, training falls back to padded batches with a note.
"""

from __future__ import annotations


def keeps_examples_apart(model) -> bool:
    """Whether two examples packed in one row give the same logits as each on its own (checked on the model)."""
    import torch

    device = next(model.parameters()).device
    first, second = [3, 5, 7, 2], [4, 6, 8]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([second], device=device), use_cache=False).logits[0]
            packed = model(input_ids=torch.tensor([first + second], device=device),
                           position_ids=torch.tensor([list(range(len(first))) + list(range(len(second)))],
                                                     device=device), use_cache=False).logits[0, len(first):]
    except (TypeError, ValueError, RuntimeError):
        return False  # a model whose forward takes no position ids cannot pack
    finally:
        model.train(was_training)
    scale = float(alone.abs().max()) or 1.0
    return bool(torch.allclose(packed.float(), alone.float(), atol=1e-4 * scale, rtol=1e-4))


class PackingCollator:
    """The padding-free collator: one row per batch, restarting position ids, -100 at every example's start,
    and no cache (see above)."""

    def __init__(self, flash_attention: bool):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_attention)

    def __call__(self, features):
        return {**self.flatten(features), "use_cache": False}


def packing_collator(model) -> PackingCollator:
    return PackingCollator("flash" in str(getattr(model.config, "_attn_implementation", "") or ""))
