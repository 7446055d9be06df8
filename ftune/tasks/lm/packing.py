"""Packing for causal-LM fine-tuning on prompt/completion and chat data: a training batch's examples are laid end
to end in a few rows (one row with flash attention), with position ids that restart at every example.

transformers builds a block-diagonal causal mask from such position ids (when no attention mask and no cache is
given: packed batches say use_cache=False, else the model would open a cache and read one long sequence), so
no token attends across an example boundary, and the first token of each example gets label -100: the loss is
exactly the loss of the same examples in a padded batch, on the same number of tokens, without computing the
padding. Whether a model honours the restarted positions is checked on the model itself, not assumed
(`keeps_examples_apart`); where it does not, training falls back to padded batches with a note.
"""

from __future__ import annotations

IGNORE = -100


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


class PackedRows:
    """Packs a batch's examples into rows as long as its longest example (first fit, longest first): each row holds
    several examples end to end with restarting position ids and -100 at every example's start. Rows are filled
    to the longest row with a pad segment that is a sequence of its own (labels -100), so no real token attends to
    a pad. Attention costs at most the longest example squared per row, as in a padded batch, over a few rows
    instead of one per example — on CPUs and without flash attention this is what makes packing pay."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features):
        import torch

        capacity = max(len(f["input_ids"]) for f in features)
        rows: list[list[dict]] = []
        for feature in sorted(features, key=lambda f: -len(f["input_ids"])):
            row = next((r for r in rows if sum(len(f["input_ids"]) for f in r) + len(feature["input_ids"])
                        <= capacity), None)
            if row is None:
                rows.append(row := [])
            row.append(feature)
        width = max(sum(len(f["input_ids"]) for f in row) for row in rows)
        ids, labels, positions = [], [], []
        for row in rows:
            row_ids, row_labels, row_positions = [], [], []
            for feature in row:
                n = len(feature["input_ids"])
                row_ids += list(feature["input_ids"])
                row_labels += [IGNORE] + list(feature["labels"])[1:]  # never predicted from the previous example
                row_positions += list(range(n))
            pad = width - len(row_ids)
            ids.append(row_ids + [self.pad_token_id] * pad)
            labels.append(row_labels + [IGNORE] * pad)
            positions.append(row_positions + list(range(pad)))
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "position_ids": torch.tensor(positions), "use_cache": False}


class FlatRow:
    """With flash attention's variable-length kernels: the whole batch in one row, no padding at all."""

    def __init__(self):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True)

    def __call__(self, features):
        return {**self.flatten(features), "use_cache": False}


def packing_collator(model, tokenizer):
    """One padding-free row per batch under flash attention; else packed rows (PackedRows)."""
    if "flash" in str(getattr(model.config, "_attn_implementation", "") or ""):
        return FlatRow()
    return PackedRows(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
